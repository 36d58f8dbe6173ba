"""The questions of a study: which ones it trains on, which it evaluates on, and the k-shot exemplars."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from calibtune.config import Selection, StudyConfig
from calibtune.data import load_questions
from calibtune.errors import CalibtuneError
from calibtune.records import Question

# The paper's training mix (all_20k_uniform) from the bundled sets: every multiple-choice set but MMLU.
PAPER_MIX = ("arc_easy", "arc_challenge", "sciq", "openbookqa", "commonsense_qa", "siqa", "piqa", "winogrande",
             "hellaswag", "boolq", "copa")
PAPER_MIX_SIZE = 20_000


def mix_questions(name: str, size: int | None, seed: int, exclude: set[str]) -> list[Question]:
    """A named mix: an equal share (``size`` // number of sets, at most what a set holds) of each set, drawn
    at random (seeded) from all its splits, without the questions in ``exclude`` (the evaluation questions).
    As in the paper, a set with fewer questions than its share gives what it has; nothing is redistributed."""
    from calibtune.data import REGISTRY

    sets = PAPER_MIX
    share = (size or PAPER_MIX_SIZE) // len(sets)
    out: list[Question] = []
    for dataset in sets:
        pool = [q for split in REGISTRY[dataset].splits for q in load_questions(dataset, split=split)
                if q.id not in exclude]
        out.extend(random.Random(f"{seed}-{name}-{dataset}").sample(pool, min(share, len(pool))))
    return out


def select_questions(selections: Sequence[Selection], seed: int, limit_per_set: int | None = None,
                     require_choices: bool = False, exclude: set[str] = frozenset(),
                     exclude_everywhere: bool = False) -> list[Question]:
    """The questions a list of selections names, in order, with duplicates refused.

    ``require_choices`` refuses open-ended questions (a multiple choice study), naming the set at fault;
    ``exclude`` names questions a mix must leave out (the evaluation questions), and with
    ``exclude_everywhere`` every selection, before its seeded sample (a calibration set).
    """
    out: list[Question] = []
    seen: set[str] = set()
    for sel in selections:
        if sel.mix is not None:
            chosen = mix_questions(sel.mix, sel.size, seed, exclude)
            if limit_per_set is not None:  # --quick: a few of each set of the mix
                taken: Counter[str] = Counter()
                chosen = [q for q in chosen if (taken.update([q.dataset]) or taken[q.dataset]) <= limit_per_set]
        else:
            questions = load_questions(sel.dataset, split=sel.split, subjects=sel.subjects)
            chosen = questions[sel.start : sel.stop]
            if exclude_everywhere:
                chosen = [q for q in chosen if q.id not in exclude]
            if sel.sample is not None and sel.sample < len(chosen):
                chosen = random.Random(f"{seed}-{sel.dataset}-{sel.split}").sample(chosen, sel.sample)
            if limit_per_set is not None:
                chosen = chosen[:limit_per_set]
        if not chosen:
            raise CalibtuneError(f"selection {sel.mix or sel.dataset}:{sel.split} [{sel.start}:{sel.stop}] holds "
                                 "no questions")
        for question in chosen:
            if require_choices and not question.is_multiple_choice:
                raise CalibtuneError(f"{sel.dataset}: question {question.id} has no choices (it is open-ended) but "
                                     "the study's task is multiple_choice; set task: open_ended")
            if question.id in seen:
                raise CalibtuneError(f"question {question.id} is selected twice")
            seen.add(question.id)
        out.extend(chosen)
    return out


@dataclass
class StudyInputs:
    """The questions of a study: training, evaluation, the k-shot exemplars (if any) and the calibration set
    that every cell's temperature is fitted on (if any)."""

    train: list[Question]
    eval: list[Question]
    exemplars: list[Question] = field(default_factory=list)
    calibrate: list[Question] = field(default_factory=list)

    @property
    def all(self) -> list[Question]:
        """Training, evaluation and calibration questions: every question a model answers."""
        return self.train + self.eval + self.calibrate

    def scored(self) -> StudyInputs:
        """The inputs a cell's method sees: the calibration questions scored after the evaluation questions
        (``eval``), so that every method scores them as it scores those."""
        return StudyInputs(self.train, self.eval + self.calibrate, self.exemplars)


def study_questions(config: StudyConfig, quick: bool = False) -> StudyInputs:
    """Load the study's questions and check that no evaluation question is also trained on."""
    mc = config.task == "multiple_choice"
    evaluation = select_questions(config.eval, config.seed, config.quick.eval_per_set if quick else None, mc)
    train = select_questions(config.train, config.seed, config.quick.train_per_set if quick else None, mc,
                             exclude={q.id for q in evaluation})
    overlap = {q.id for q in train} & {q.id for q in evaluation}
    if overlap:
        raise CalibtuneError(f"{len(overlap)} evaluation questions are also in the training set, "
                             f"e.g. {sorted(overlap)[0]}: make the train and eval selections disjoint")
    calibrate = select_questions(config.calibrate, config.seed, config.quick.eval_per_set if quick else None, mc,
                                 exclude={q.id for q in train + evaluation}, exclude_everywhere=True)
    exemplars: list[Question] = []
    settings = config.open_ended
    if config.task == "open_ended" and settings.shots:
        exemplars = select_questions([settings.exemplars], config.seed)[: settings.shots]
        used = {q.id for q in train + evaluation + calibrate} & {q.id for q in exemplars}
        if used:
            raise CalibtuneError(f"exemplar {sorted(used)[0]} is also a study question: make "
                                 "open_ended.exemplars disjoint from train, eval and calibrate")
        if len(exemplars) < settings.shots:
            raise CalibtuneError(f"open_ended.exemplars holds {len(exemplars)} questions, fewer than "
                                 f"shots: {settings.shots}")
    return StudyInputs(train, evaluation, exemplars, calibrate)


def training_subsets(inputs: StudyInputs, sizes: Sequence[int | str] | None, seed: int,
                     quick: bool = False) -> list[StudyInputs]:
    """The study's inputs with nested training sets of the given sizes (``all``, or a size at least the
    training set's, is all of it): the first ``n`` of one seeded shuffle, so a larger set holds every smaller
    one. Without sizes, the inputs as they are. ``--quick`` keeps as many sizes, spread over its small
    training set (1/8, 1/4, 1/2 and all of it for four sizes)."""
    if not sizes:
        return [inputs]
    shuffled = random.Random(f"{seed}-train-sizes").sample(list(inputs.train), len(inputs.train))
    if quick:
        sizes = [max(8, len(shuffled) >> k) for k in reversed(range(len(sizes)))]
    counts = sorted({len(shuffled) if n == "all" else min(int(n), len(shuffled)) for n in sizes})
    return [StudyInputs(shuffled[:n], inputs.eval, inputs.exemplars, inputs.calibrate) for n in counts]
