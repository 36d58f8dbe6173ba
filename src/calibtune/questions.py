"""The questions of a study: which ones it trains on, which it evaluates on, and the k-shot exemplars."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from calibtune.config import Selection, StudyConfig
from calibtune.data import load_questions
from calibtune.errors import CalibtuneError
from calibtune.records import Question


def select_questions(selections: Sequence[Selection], seed: int, limit_per_set: int | None = None,
                     require_choices: bool = False) -> list[Question]:
    """The questions a list of selections names, in order, with duplicates refused.

    ``require_choices`` refuses open-ended questions (a multiple choice study), naming the set at fault.
    """
    out: list[Question] = []
    seen: set[str] = set()
    for sel in selections:
        questions = load_questions(sel.dataset, split=sel.split, subjects=sel.subjects)
        chosen = questions[sel.start : sel.stop]
        if sel.sample is not None and sel.sample < len(chosen):
            chosen = random.Random(f"{seed}-{sel.dataset}-{sel.split}").sample(chosen, sel.sample)
        if limit_per_set is not None:
            chosen = chosen[:limit_per_set]
        if not chosen:
            raise CalibtuneError(f"selection {sel.dataset}:{sel.split} [{sel.start}:{sel.stop}] holds no questions")
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
    """The questions of a study, split into training and evaluation (and k-shot exemplars, if any)."""

    train: list[Question]
    eval: list[Question]
    exemplars: list[Question] = field(default_factory=list)

    @property
    def all(self) -> list[Question]:
        """Training then evaluation questions."""
        return self.train + self.eval


def study_questions(config: StudyConfig, quick: bool = False) -> StudyInputs:
    """Load the study's questions and check that no evaluation question is also trained on."""
    mc = config.task == "multiple_choice"
    train = select_questions(config.train, config.seed, config.quick.train_per_set if quick else None, mc)
    evaluation = select_questions(config.eval, config.seed, config.quick.eval_per_set if quick else None, mc)
    overlap = {q.id for q in train} & {q.id for q in evaluation}
    if overlap:
        raise CalibtuneError(f"{len(overlap)} evaluation questions are also in the training set, "
                             f"e.g. {sorted(overlap)[0]}: make the train and eval selections disjoint")
    exemplars: list[Question] = []
    settings = config.open_ended
    if config.task == "open_ended" and settings.shots:
        exemplars = select_questions([settings.exemplars], config.seed)[: settings.shots]
        used = {q.id for q in train + evaluation} & {q.id for q in exemplars}
        if used:
            raise CalibtuneError(f"exemplar {sorted(used)[0]} is also a study question: make "
                                 "open_ended.exemplars disjoint from train and eval")
        if len(exemplars) < settings.shots:
            raise CalibtuneError(f"open_ended.exemplars holds {len(exemplars)} questions, fewer than "
                                 f"shots: {settings.shots}")
    return StudyInputs(train, evaluation, exemplars)
