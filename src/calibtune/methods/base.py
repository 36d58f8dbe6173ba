"""What a method is: its settings, how it makes a cell, how it is labelled and how ``ask`` loads it.

A method is registered once, in its own module under ``calibtune.methods``, as a
``Method``. The study driver knows methods only through this record: adding one is a
new module and one line in the registry (``calibtune.methods.__init__``).

Method modules import nothing heavy at the top (no torch): reading a study config
builds its sections from the registry, and that must stay cheap. The work of a method
(``make_cell``, ``load``) imports what it needs when it runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from calibtune.distributed import ONE_PROCESS, DataParallel
from calibtune.records import Answer, Question
from calibtune.settings import Settings

if TYPE_CHECKING:
    from calibtune.config import StudyConfig
    from calibtune.estimators.base import AnswerEstimator
    from calibtune.graders.types import Grader
    from calibtune.models import LoadedModel
    from calibtune.questions import StudyInputs

Log = Callable[[str], None]
TASKS = frozenset({"multiple_choice", "open_ended"})


@dataclass(frozen=True)
class FeatureTable:
    """An estimator model's hidden-state features of an answering model's "question + proposed answer".

    ``features[index[question_id]]`` is the ``[len(layers), hidden]`` array of one answer.
    """

    features: np.ndarray
    index: Mapping[str, int]
    layers: tuple[int, ...]

    def of(self, questions: Sequence[Question]) -> np.ndarray:
        """The features of the answers to ``questions``, in order: ``[n, len(layers), hidden]``."""
        return self.features[[self.index[q.id] for q in questions]]


@dataclass(frozen=True)
class CellScores:
    """What a method returns for a cell: P(correct) of each evaluation answer, and the held-out
    answers (P(correct) and label) that temperature scaling is fitted on, if any."""

    p_eval: np.ndarray
    p_cal: np.ndarray | None = None
    y_cal: np.ndarray | None = None


@dataclass
class CellContext:
    """Everything a method may use to make one cell: estimator model E estimating answering model T.

    ``answers`` are T's graded answers by question id. Models and the Probe's features
    come from the study's shared, lazy resources, so a cell that needs neither loads nothing.
    """

    study: StudyConfig
    settings: Settings | None  # the method's own config section
    estimator_model: str
    answering_model: str
    inputs: StudyInputs
    answers: Mapping[str, Answer]
    load_model: Callable[[str], LoadedModel]
    probe_features: Callable[[], FeatureTable]  # E's features of T's answers
    grader: Callable[[], Grader]  # the study's grader of open-ended answers
    log: Log = print
    quick: bool = False
    shared: dict[str, Any] = field(default_factory=dict)  # what E's passes in one cell leave for another (its row)
    pending: Callable[[str], bool] = lambda method: False  # whether that method's cell of (E, T) is still to compute
    out: Path | None = None  # where the method saves its estimator (set for cells that are stored)
    checkpoint: Path | None = None  # where adapter training keeps its resumable state
    parallel: DataParallel = ONE_PROCESS  # the processes that train this cell's estimator together

    def model(self) -> LoadedModel:
        """The estimator model E, loaded (once) by the study."""
        return self.load_model(self.estimator_model)

    def prompts(self, questions: Sequence[Question]) -> tuple[list[str], list[str]]:
        """The question prompts, and T's proposed answers with their leading separator."""
        from calibtune.prompts import format_prompt

        cfg = self.study
        return ([format_prompt(q, cfg.prompt) for q in questions],
                [cfg.option_prefix + self.answers[q.id].text for q in questions])

    def labels(self, questions: Sequence[Question]) -> np.ndarray:
        """1 where T's answer is correct; an answer the grader left undecided counts as wrong."""
        return np.array([self.answers[q.id].label for q in questions], dtype=np.int64)

    def calibration_sample(self) -> list[Question]:
        """A seeded sample of training questions for the temperature of methods that hold none out; none when
        the study has a calibration set (every cell's temperature is fitted on that)."""
        cfg = self.study
        if cfg.calibrate:
            return []
        n_cal = min(cfg.zero_shot_calibration, len(self.inputs.train))
        if self.quick:
            n_cal = min(n_cal, cfg.quick.train_per_set)
        return random.Random(f"{cfg.seed}-zero-shot").sample(list(self.inputs.train), n_cal) if n_cal else []

    def meta(self, n_train: int) -> dict[str, Any]:
        """What a saved estimator records of how its answers were made (``calibtune ask`` asks the same way)."""
        from calibtune.models import model_fingerprint, model_reference
        from calibtune.open_ended import references_of

        cfg = self.study
        meta: dict[str, Any] = {
            "estimator_model": model_reference(self.estimator_model),
            "estimator_fingerprint": model_fingerprint(self.estimator_model),
            "trained_on": model_reference(self.answering_model), "prompt": cfg.prompt,
            "option_prefix": cfg.option_prefix, "n_train": n_train, "seed": cfg.seed, "task": cfg.task}
        if cfg.task == "open_ended":
            exemplars = [{"id": q.id, "question": q.text, "answer": references_of(q)[0]} for q in self.inputs.exemplars]
            meta["answering"] = {"exemplars": exemplars, "chat_template": cfg.open_ended.chat_template,
                                 "max_new_tokens": cfg.open_ended.max_new_tokens}
        else:
            meta["answering"] = {"select": cfg.select}
        return meta


MakeCell = Callable[[CellContext], CellScores]
LoadEstimator = Callable[[Path, dict, "LoadedModel"], "AnswerEstimator"]


@dataclass(frozen=True)
class Method:
    """One uncertainty method, as the study, the report and ``ask`` see it.

    - ``scope``: ``matrix`` methods have an estimator model, one cell per (E, T);
      ``answerer`` methods are read off the answering model itself, one cell per T (E = T).
    - ``config``: the pydantic model of the method's own section of a study config
      (the single source of its settings and defaults), or None when it has no settings.
    - ``study_settings``: the study-level settings its cells depend on besides the ones
      every cell depends on (prompt, answer separator, batch size, seed, temperature scaling).
    - ``needs_model``: False when a cell is computed from the answers alone (cheap, not cached).
    - ``data_parallel``: True when a cell trains across a group of processes (``CellContext.parallel``).
    - ``may_leave_out``: True when a NaN P(correct) means "no estimate" (an unparseable reply),
      which leaves the answer out of the cell; any other method's non-finite P(correct) is an error.
    - ``saved_file``/``load``: the JSON a saved estimator writes, and how ``ask`` loads one.
    """

    name: str
    label: str
    make_cell: MakeCell
    scope: Literal["matrix", "answerer"] = "matrix"
    config: type[Settings] | None = None
    tasks: frozenset[str] = TASKS
    study_settings: tuple[str, ...] = ()
    needs_model: bool = True
    data_parallel: bool = False
    may_leave_out: bool = False
    saved_file: str | None = None
    load: LoadEstimator | None = field(default=None, compare=False)
