"""Settings shared by the two methods that train LoRA adapters (LoRA, LoRA + Prompt), and how a study
chooses their training answers."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from calibtune.methods.base import CellContext, CellScores
from calibtune.records import Question
from calibtune.settings import Settings


class AdapterConfig(Settings):
    """LoRA adapters (peft) and their training loop; the defaults are the paper's adapters.

    ``target_modules: auto`` takes peft's default projections for the model's architecture
    (query and value for Llama, Mistral, Gemma, Qwen). ``layers: top_half`` puts adapters
    on the upper half only, so the backward pass stops midway.
    """

    r: int = Field(8, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: Literal["auto"] | list[str] = "auto"
    layers: Literal["all", "top_half"] = "all"
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    max_train_examples: int | None = Field(800, ge=2, description="a seeded sample of the training answers")
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["cosine", "linear"] = Field("cosine", description="learning-rate decay after the warm-up")
    eval_every: int = Field(20, ge=1, description="steps between validations")
    patience: int = Field(4, ge=1, description="validations without improvement before stopping")
    max_grad_norm: float = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1, description="validate and keep an exponential moving "
                                    "average of the adapter weights with this decay (e.g. 0.99); none: the "
                                    "weights themselves")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    balance: Literal["none", "dataset"] = Field("none", description="dataset: weight the training answers so "
                                                "that every dataset has as much weight on right answers as on "
                                                "wrong ones (its identity then tells nothing)")


def study_adapter_config(ctx: CellContext) -> AdapterConfig:
    """The method's settings as the study trains them: ``--quick`` caps the steps."""
    settings = ctx.settings
    assert isinstance(settings, AdapterConfig)
    if ctx.quick:
        return settings.model_copy(update={"max_steps": ctx.study.quick.adapter_steps})
    return settings


def quick_training_size(steps: int, settings: AdapterConfig) -> int:
    """How many training answers ``steps`` steps take under ``--quick``, with the validation share beside them."""
    return math.ceil(steps * settings.batch_size / (1 - settings.val_fraction))


def adapter_training_set(ctx: CellContext, settings: AdapterConfig) -> list[Question]:
    """The (seeded sample of) training questions that an adapter method trains on; under ``--quick``, as many
    as its few steps take and the validation share beside them, so no answer is read for nothing."""
    train = list(ctx.inputs.train)
    cap = settings.max_train_examples
    if ctx.quick:
        cap = quick_training_size(ctx.study.quick.adapter_steps, settings)
    if cap is None or cap >= len(train):
        return train
    return random.Random(f"{ctx.study.seed}-adapters").sample(train, cap)


def fit_and_score(ctx: CellContext, estimator, seqs: Sequence, labels: np.ndarray, eval_seqs: Sequence,
                  **fit_options) -> CellScores:
    """Train an adapter estimator on T's answers (``seqs``, ``labels``), save it, and score T's evaluation
    answers and the answers it held out (those calibrate its temperature); the adapters come off after.
    A group of processes (``ctx.parallel``) trains together and scores a share each; its leader saves."""
    parallel = ctx.parallel
    try:
        estimator.fit(seqs, labels, ctx.checkpoint, parallel=parallel, **fit_options)
        if parallel.leader or parallel.sharded:  # sharded adapters are gathered by all (a non-leader: to scratch)
            estimator.save(ctx.out)
        val = estimator.val_indices
        scored = list(eval_seqs) + [seqs[i] for i in val]
        mine = parallel.share(np.arange(len(scored)))  # a group scores its share each, then puts them together
        p_all = parallel.gather(mine, estimator.predict_proba([scored[i] for i in mine]), len(scored))
    finally:
        estimator.release()
    n = len(eval_seqs)
    return CellScores(p_all[:n], p_all[n:], labels[val])
