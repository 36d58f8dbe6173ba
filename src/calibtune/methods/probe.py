"""The Probe: a small classifier on a frozen estimator model's hidden state."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from calibtune.estimator_settings import ProbeConfig
from calibtune.methods.base import CellContext, CellScores, Method

if TYPE_CHECKING:
    from calibtune.estimators.base import AnswerEstimator
    from calibtune.models import LoadedModel


def make_cell(ctx: CellContext) -> CellScores:
    """Fit the Probe on E's features of T's training answers; score T's evaluation answers. Its temperature is
    fitted on the training answers' out-of-fold P(correct) (with ``folds: 1``, on the held-out share's)."""
    from calibtune.estimators.probe import ProbeEstimator

    table = ctx.probe_features()
    train, evaluation = ctx.inputs.train, ctx.inputs.eval
    y_train = ctx.labels(train)
    x_train = table.of(train)
    meta = {**ctx.meta(len(y_train)), "token": ctx.study.features.token}
    probe = ProbeEstimator(ctx.settings, layers=table.layers, seed=ctx.study.seed, meta=meta).fit(x_train, y_train)
    probe.save(ctx.out)
    p = probe.p_correct(table.of(evaluation))
    held, p_held = probe.held_out_  # every training answer, each scored by a head that did not train on it
    scores = ", ".join(f"{k}: {v:.3f}" for k, v in probe.layer_scores_.items())
    ctx.log(f"probe {ctx.estimator_model} on {ctx.answering_model}: layer {probe.layer_} "
            f"(validation AUROC by layer {scores})")
    return CellScores(p, p_held, y_train[held])


def load(folder: Path, info: dict, lm: LoadedModel) -> AnswerEstimator:
    """A saved probe on its estimator model: scores (prompts, answers) by reading the model's hidden states."""
    from calibtune.estimators.probe import ProbeEstimator, ProbeOnModel

    return ProbeOnModel(ProbeEstimator.load(folder), lm, token=info.get("token", "last"),
                        option_prefix=info.get("option_prefix", " "))


METHOD = Method(name="probe", label="Probe", make_cell=make_cell, config=ProbeConfig,
                study_settings=("features",), saved_file="probe.json", load=load)
