"""How a study chooses the training answers of the two methods that train LoRA adapters (LoRA, LoRA +
Prompt), and fits and scores them; their settings are in ``calibtune.estimator_settings``."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from calibtune.estimator_settings import AdapterConfig
from calibtune.methods.base import CellContext, CellScores
from calibtune.records import Question


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
    The held-out answers' P(correct) is the kept step's validation (``estimator.val_logits``) when training
    ran it in this process, so they are not read twice. A group of processes (``ctx.parallel``) trains
    together and scores a share each; its leader saves."""
    from scipy.special import expit

    parallel = ctx.parallel
    try:
        estimator.fit(seqs, labels, ctx.checkpoint, parallel=parallel, **fit_options)
        if parallel.leader or parallel.sharded:  # sharded adapters are gathered by all (a non-leader: to scratch)
            estimator.save(ctx.out)
        val = estimator.val_indices
        scored = list(eval_seqs)
        if estimator.val_logits is None:  # kept before a resume: its validation is not in memory
            scored += [seqs[i] for i in val]
        mine = parallel.share(np.arange(len(scored)))  # a group scores its share each, then puts them together
        p_all = parallel.gather(mine, estimator.predict_proba([scored[i] for i in mine]), len(scored))
    finally:
        estimator.release()
    n = len(eval_seqs)
    p_val = p_all[n:] if estimator.val_logits is None else expit(estimator.val_logits)
    return CellScores(p_all[:n], p_val, labels[val])
