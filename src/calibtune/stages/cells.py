"""The cells stage: one method's estimate of one answering model's correctness, as score rows.

A cell is keyed by its method's settings (its own config section and the study-level
settings it declares), the estimator model, and the content of what it reads: the
answering model's graded answers to the training and evaluation questions, and the
questions themselves. A cell that trains an estimator keeps it inside its artifact, so a
cached cell still gives the run folder its estimator; training checkpoints live under
``checkpoints/<cell key>`` until the cell is stored.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from calibtune.calibration import TemperatureScaler
from calibtune.config import StudyConfig, method_settings
from calibtune.errors import CalibtuneError
from calibtune.estimators import StudyTemperature, write_study_temperature
from calibtune.methods import CellContext, CellScores, Method
from calibtune.questions import StudyInputs
from calibtune.records import Answer, Question
from calibtune.stages.base import ModelStage, Runtime, digest

# What every cell depends on besides its method's own settings.
COMMON_SETTINGS = ("task", "prompt", "option_prefix", "batch_size", "token_budget", "temperature_scaling", "seed")


@dataclass(frozen=True)
class CellStage(ModelStage):
    """One cell of one method: the estimator model whose weights it reads, and the method's settings."""

    name: ClassVar[str] = "cell"
    version: ClassVar[int] = 6  # 6: the divergence target's head runs once per batch (other bf16 rounding)
    method: str
    method_settings: Mapping[str, Any]


def cell_settings(config: StudyConfig, method: Method, quick: bool) -> dict[str, Any]:
    """Every config setting a method's cells depend on: the common ones, the method's own section, and the
    study-level settings it declares (so changing another method's settings leaves its cells alone)."""
    own = method_settings(config, method.name)
    out: dict[str, Any] = {name: getattr(config, name) for name in COMMON_SETTINGS}
    out[method.name] = own.model_dump(mode="json") if own is not None else None
    for name in method.study_settings:
        value = getattr(config, name)
        out[name] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    out["quick"] = config.quick.model_dump() if quick else None
    return out


def cell_stage(config: StudyConfig, method: Method, estimator_model: str, quick: bool) -> CellStage:
    """The cell stage of ``method`` on estimator model ``estimator_model``."""
    return CellStage.of(estimator_model, config.dtype, config.device, method=method.name,
                        method_settings=cell_settings(config, method, quick))


def cell_inputs(answers: Mapping[str, Answer], inputs: StudyInputs) -> dict[str, str]:
    """Digests of what a cell reads: the training, evaluation and calibration questions with T's graded
    answers to them, and the exemplars the answers were made with. (A study without a calibration set keeps
    the keys it had before there was one.)"""
    def part(questions: Sequence[Question]) -> str:
        return digest([[q.content(), answers[q.id].content()] for q in questions])

    out = {"train": part(inputs.train), "eval": part(inputs.eval),
           "exemplars": digest([q.content() for q in inputs.exemplars])}
    if inputs.calibrate:
        out["calibrate"] = part(inputs.calibrate)
    return out


def cell_key(config: StudyConfig, method: Method, estimator_model: str, answers: Mapping[str, Answer],
             inputs: StudyInputs, quick: bool) -> str:
    """The artifact key of one cell."""
    return cell_stage(config, method, estimator_model, quick).key(cell_inputs(answers, inputs))


def score_rows(method: Method, e: str, t: str, questions: Sequence[Question], y: np.ndarray, scores: CellScores,
               temperature_scaling: bool, log: Callable[[str], None]) -> pd.DataFrame:
    """One cell's score rows, with P(correct) temperature-scaled on ``scores``' calibration answers (the
    study's calibration set, or the method's held-out answers).

    Only a method that may leave answers out (a verbalized reply with no probability in
    it) may return a NaN P(correct); its answers are left out of the cell and counted.
    A non-finite P(correct) from any other method is an error, never a smaller cell.
    """
    p, y = np.asarray(scores.p_eval, dtype=float), np.asarray(y)
    keep = np.isfinite(p)
    cal_p = None if scores.p_cal is None else np.asarray(scores.p_cal, dtype=float)
    if not method.may_leave_out:
        for name, values, asked in (("evaluation", p, questions), ("calibration", cal_p, None)):
            if values is not None and not np.isfinite(values).all():
                bad = int((~np.isfinite(values)).sum())
                where = f", e.g. question {asked[int(np.argmin(np.isfinite(values)))].id}" if asked else ""
                raise CalibtuneError(f"{method.label} {e} on {t}: P(correct) is not a finite number for {bad} of "
                                     f"{len(values)} {name} answers{where} (a numeric overflow; try dtype: float32)")
    elif not keep.all():
        log(f"{method.label} {e} on {t}: {int((~keep).sum())} of {len(p)} evaluation answers have "
            "no P(correct) (an unparseable reply) and are left out of this cell")
    scaler = TemperatureScaler()
    if temperature_scaling and cal_p is not None:
        cal_keep = np.isfinite(cal_p)
        y_cal = np.asarray(scores.y_cal)
        if cal_keep.any() and len(np.unique(y_cal[cal_keep])) == 2:
            scaler = TemperatureScaler.fit(cal_p[cal_keep], y_cal[cal_keep])
    kept = [q for q, k in zip(questions, keep) if k]
    return pd.DataFrame({
        "method": method.name, "model": e, "trained_on": t, "evaluated_on": t,
        "question_id": [q.id for q in kept], "dataset": [q.dataset for q in kept],
        "subject": [q.subject for q in kept],
        "p_correct": p[keep], "label": y[keep].astype(int),
        "p_correct_ts": scaler.transform(p[keep]), "temperature": scaler.temperature,
    })


def run_cell(rt: Runtime, config: StudyConfig, method: Method, context: CellContext, quick: bool,
             estimator_folder: Path) -> pd.DataFrame:
    """One cell's score rows: from the store when the same cell was computed before, else computed and stored.

    The cell is computed first (into a scratch folder), then written; a cell trained
    before is copied into ``estimator_folder`` either way, with the cell's temperature beside it
    (``temperature.json``). Of a group of processes that
    computes the cell together (``context.parallel``), the leader alone writes; the others
    return the rows they computed.
    """
    e, t = context.estimator_model, context.answering_model
    evaluation, calibration = context.inputs.eval, context.inputs.calibrate

    def compute() -> pd.DataFrame:
        if not calibration:
            scores = method.make_cell(context)
        else:  # the method scores the calibration questions after the evaluation ones; its temperature is theirs
            scored = method.make_cell(replace(context, inputs=context.inputs.scored()))
            p = np.asarray(scored.p_eval)
            scores = CellScores(p[:len(evaluation)], p[len(evaluation):], context.labels(calibration))
        return score_rows(method, e, t, evaluation, context.labels(evaluation), scores,
                          config.temperature_scaling, rt.log)

    if not method.needs_model:  # read off the answers: cheap, not stored
        return compute()
    stage = cell_stage(config, method, e, quick)
    key = cell_key(config, method, e, context.answers, context.inputs, quick)
    checkpoint = rt.store.root / "checkpoints" / key
    if not context.parallel.leader:
        with rt.store.scratch() as scratch:
            context.out, context.checkpoint = scratch / "estimator", checkpoint
            return compute()
    if rt.store.has("cell", key):
        rt.log(f"{method.label} {e} on {t}: from the cache ({key[:12]})")
    else:
        with rt.timed(f"{method.name} {e} on {t}"), rt.store.scratch() as scratch:
            context.out, context.checkpoint = scratch / "estimator", checkpoint
            table = compute()
            with rt.store.writing("cell", key, {"settings": stage.settings()}) as folder:
                table.to_parquet(folder / "table.parquet", index=False)
                if context.out.is_dir():
                    shutil.move(str(context.out), folder / "estimator")
        shutil.rmtree(checkpoint, ignore_errors=True)
    saved = rt.store.path("cell", key) / "estimator"
    if saved.is_dir():
        if estimator_folder.exists():
            shutil.rmtree(estimator_folder)
        shutil.copytree(saved, estimator_folder)
    table = rt.store.get_table("cell", key)
    # what the cell's p_correct_ts is, for ``calibtune ask``: from the table, so a cached cell gets it too. A
    # temperature of exactly 1 is the identity score_rows keeps when its answers were all right or all wrong: no fit
    if saved.is_dir() and config.temperature_scaling and len(table) and table.temperature.iloc[0] != 1.0:
        write_study_temperature(estimator_folder, StudyTemperature(
            float(table.temperature.iloc[0]), "calibration set" if calibration else "held-out answers",
            len(calibration) if calibration else None))
    return table
