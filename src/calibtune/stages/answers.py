"""The answers stage: each answering model's answers to every study question, then graded.

Answers are stored ungraded, in shards keyed by what the model is shown of each
question (its id, text, and options when it chooses among them), so editing a gold
answer or a reference regrades without answering again, and editing a question's text
answers only its shard again. Grading is cheap (a judge's verdicts are cached) and runs
after loading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from calibtune.config import StudyConfig
from calibtune.errors import CalibtuneError
from calibtune.graders import JudgementCache, count_undecided, grade_answers
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar
from calibtune.questions import StudyInputs
from calibtune.records import Answer, Question, answers_from_table, answers_to_table
from calibtune.stages.base import ModelStage, Runtime
from calibtune.stages.features import features_stage, put_option_features, study_reads_features

# A study warns when at least this share of a model's open-ended answers are empty.
EMPTY_WARNING_SHARE = 0.2


@dataclass(frozen=True)
class ClozeAnswers(ModelStage):
    """Multiple-choice answers by cloze scoring: every option scored as the continuation of the prompt."""

    name: ClassVar[str] = "answers"
    version: ClassVar[int] = 3
    prompt: str
    option_prefix: str
    select: str
    batch_size: int

    token_budget: int

    def answer(self, lm: LoadedModel, questions: Sequence[Question], progress,
               layers: Sequence[int] | None = None) -> tuple[list[Answer], list[np.ndarray] | None]:
        """The model's (ungraded) answers to ``questions``, and its hidden states at ``layers`` at the end of every
        option of each question (the Probe's features of any answer to them, read in the same pass)."""
        from calibtune.answer import ClozeSettings, cloze_answers

        settings = ClozeSettings(self.prompt, self.option_prefix, self.select, self.batch_size, self.token_budget)
        return cloze_answers(lm, questions, settings, progress, layers)


@dataclass(frozen=True)
class GeneratedAnswers(ModelStage):
    """Open-ended answers: greedy generation after the prompt (and k exemplars, or in the chat template)."""

    name: ClassVar[str] = "answers"
    version: ClassVar[int] = 3
    prompt: str
    exemplars: tuple[Mapping[str, Any], ...]  # each exemplar's content: the prompt shows it with its answer
    chat_template: bool
    max_new_tokens: int
    batch_size: int

    def answer(self, lm: LoadedModel, questions: Sequence[Question], progress,
               layers: Sequence[int] | None = None) -> tuple[list[Answer], None]:
        """The model's (ungraded) answers to ``questions`` (generation reads no features: ``layers`` is ignored)."""
        from calibtune.generate import GenerationSettings
        from calibtune.open_ended import OpenEndedPrompt, answer_open_ended

        exemplars = tuple(Question(**x) for x in self.exemplars)
        prompt = OpenEndedPrompt(self.prompt, exemplars, self.chat_template)
        generation = GenerationSettings(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return answer_open_ended(lm, questions, prompt, generation, progress), None


def answers_stage(config: StudyConfig, inputs: StudyInputs, model: str) -> ClozeAnswers | GeneratedAnswers:
    """The answers stage of one answering model, with every setting its answers depend on."""
    common = {"prompt": config.prompt, "batch_size": config.batch_size}
    if config.task == "multiple_choice":
        return ClozeAnswers.of(model, config.dtype, config.device, **common, option_prefix=config.option_prefix,
                               select=config.select, token_budget=config.token_budget)
    settings = config.open_ended
    return GeneratedAnswers.of(model, config.dtype, config.device, **common,
                               exemplars=tuple(q.content() for q in inputs.exemplars),
                               chat_template=settings.chat_template, max_new_tokens=settings.max_new_tokens)


def graded_answers(rt: Runtime, config: StudyConfig, inputs: StudyInputs, model: str, grader) -> dict[str, Answer]:
    """Model ``model``'s graded answers to every study question, by question id (answers cached in shards)."""
    stage = answers_stage(config, inputs, model)
    questions = inputs.all
    plan = stage.shards([q.seen(with_choices=config.task == "multiple_choice") for q in questions])
    missing, mine = rt.my_missing("answers", plan)
    rt.report_shards(f"answers of {model}", plan, missing)
    # The Probe reads any model's answers as this answering pass reads the options: the pass keeps their features.
    features = features_stage(config, model) if _shares_features(config) else None
    if mine:
        from calibtune.answer import chosen_features

        lm = rt.models.get(model)
        verb = "answer " if config.task == "multiple_choice" else "generate"
        with rt.timed(f"answer {model}"), progress_bar(f"{rt.ranks.tag()}{verb} {model}",
                                                       sum(len(questions[p]) for _, p in mine)) as advance:
            for key, part in mine:
                answers, feats = stage.answer(lm, questions[part], advance, features.layers if features else None)
                rt.store.put_table("answers", key, answers_to_table(answers), meta={"settings": stage.settings()})
                if feats is not None:
                    put_option_features(rt, features, config, questions[part], feats)
                    by_id = {a.question_id: a for a in answers}
                    (feature_key, _), = features.shards(features.shard_contents(config, questions[part], by_id),
                                                        size=len(questions[part]))
                    rt.store.put_arrays("features", feature_key,
                                        {"features": chosen_features(feats, [a.choice for a in answers])},
                                        meta={"settings": features.settings(), "from": "answering pass"})
    rt.ranks.wait()  # every shard is in the store
    answers = [a for key, _ in plan for a in answers_from_table(rt.store.get_table("answers", key))]
    if config.task == "open_ended":
        _check_empty(rt, config, model, answers)
    with rt.timed(f"grade {model}"):
        cache = JudgementCache.default() if hasattr(grader, "grade_batch") else None
        if cache is not None and not rt.ranks.main:
            rt.ranks.wait()  # the main process asks the judge; the others then read its verdicts from the cache
        graded = _grade(answers, questions, grader, cache)
        if cache is not None and rt.ranks.main:
            rt.ranks.wait()
    by_id = {a.question_id: a for a in graded}
    undecided = count_undecided(graded)
    if undecided:
        rt.log(f"{model}: the grader could not decide {undecided} of {len(graded)} answers; they count as wrong")
    acc_train = np.mean([by_id[q.id].label for q in inputs.train])
    acc_eval = np.mean([by_id[q.id].label for q in inputs.eval])
    acc_cal = (f", {np.mean([by_id[q.id].label for q in inputs.calibrate]):.3f} on calibration questions"
               if inputs.calibrate else "")
    rt.log(f"{model}: accuracy {acc_train:.3f} on training questions, {acc_eval:.3f} on evaluation questions"
           f"{acc_cal}")
    return by_id


def _shares_features(config: StudyConfig) -> bool:
    """Whether the answering pass also keeps the Probe's features (cloze answers, read at the last token)."""
    return config.task == "multiple_choice" and config.features.token == "last" and study_reads_features(config)


def _grade(answers: list[Answer], questions: list[Question], grader, cache) -> list[Answer]:
    """Grade, with a progress bar while a judge works."""
    if cache is None:
        return grade_answers(answers, questions, grader)
    with progress_bar(f"judge {grader.name}", len(answers)) as advance:
        return grade_answers(answers, questions, grader, cache=cache, progress=advance)


def _check_empty(rt: Runtime, config: StudyConfig, model: str, answers: list[Answer]) -> None:
    """Say at once when many open-ended answers are empty, with the likely fix; refuse when all are."""
    empty = sum(not a.text.strip() for a in answers)
    if empty < EMPTY_WARNING_SHARE * len(answers):
        return
    settings = config.open_ended
    fix = ("an instruct model asked without its chat template or exemplars often ends its turn at once: "
           "set open_ended.chat_template: true, or open_ended.shots with open_ended.exemplars"
           if not settings.shots and not settings.chat_template else
           "check the prompt and open_ended.max_new_tokens")
    message = f"{model}: {empty} of {len(answers)} open-ended answers are empty; {fix}"
    if empty == len(answers):
        raise CalibtuneError(message)
    rt.log(f"warning: {message}")
