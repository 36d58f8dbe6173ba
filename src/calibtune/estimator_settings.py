"""The settings of the trained estimators (Probe, LoRA, LoRA + Prompt): what a config's ``methods``
section sets for each, and what every fitted estimator saves beside its weights.

They sit below both ``calibtune.estimators`` (which trains with them) and ``calibtune.methods``
(which makes the study's cells from them), so neither imports the other for its settings.
Nothing here imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from calibtune.prompts import DEFAULT_OPTIONS, DEFAULT_QUERY
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
    stop_after: float = Field(0.0, ge=0, le=1, description="early stopping may end training only once this share "
                              "of the schedule's steps is done (0: at any validation); the step kept is still the "
                              "best validated one, so the untrained adapters can still be kept")
    max_grad_norm: float = Field(1.0, gt=0)
    keep: Literal["loss", "calibrated_loss", "auroc", "last"] = Field(
        "loss", description="which validated step training keeps and early stopping watches, by the held-out "
        "answers': loss; loss after Platt scaling fitted on them (a shift or scale of the logit, which the "
        "study's temperature scaling undoes, does not count); AUROC; or last: no early stopping, the last step")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="validate and keep an exponential moving "
                                    "average of the adapter weights with this decay (e.g. 0.99); none: the "
                                    "weights themselves")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    balance: Literal["none", "dataset"] = Field("none", description="dataset: weight the training answers so "
                                                "that every dataset has as much weight on right answers as on "
                                                "wrong ones (its identity then tells nothing)")


class LoraHeadConfig(AdapterConfig):
    """Which hidden state the head reads, and the head itself."""

    layer: int = Field(-1, ge=-1, description="hidden-state layer; -1 means the middle layer")
    hidden_size: int = Field(64, ge=1)
    head_dropout: float = Field(0.1, ge=0, lt=1)
    init_from_probe: bool = Field(True, description="start the head from a Probe fitted on the same layer and "
                                  "training answers (its standardisation and weights)")


class LoraPromptConfig(AdapterConfig):
    """The query, and the divergence that keeps the adapted model close to the base model on answer text.

    ``divergence``: ``js`` (Jensen-Shannon), ``forward_kl`` KL(base || adapted) or
    ``reverse_kl`` KL(adapted || base), weighted by ``kl_weight``.
    """

    query: str = DEFAULT_QUERY
    options: tuple[str, str] = DEFAULT_OPTIONS
    kl_weight: float = Field(1.0, ge=0)
    divergence: Literal["js", "forward_kl", "reverse_kl"] = "js"
    calibration_fraction: float = Field(
        0.0, ge=0, lt=1, description="the share of the held-out answers kept apart from choosing the step: the "
        "recalibration map and the study's temperature are fitted on these alone, after training. The step kept is "
        "the one that looked best on the held-out answers, so on those same answers it looks better than on new "
        "ones. 0: the same held-out answers choose the step and calibrate it")
    recalibrate: Literal["none", "platt"] = Field(
        "none", description="platt: P(correct) is the query's, mapped by a Platt scaling (slope and bias on its "
        "logit) fitted on the held-out answers at the kept step, as keep: calibrated_loss scores them; the slope and "
        "bias are saved with the adapters. The query's logit comes out of training with an offset that moves from "
        "step to step and that a temperature cannot undo. none: the query's own P(correct), as the paper")


class ProbeConfig(Settings):
    """The Probe's head and how it is trained; saved with every fitted probe.

    ``layer``: ``auto`` fits a head on every candidate layer (``features.layers``) and keeps
    the best on validation AUROC; ``last`` is the paper's last-layer probe; a number picks that layer.
    ``folds``: the Probe is an ensemble of that many heads (at most as many as the smaller class has
    answers), each trained on all folds of the training answers but one and stopped early on that one; the
    layer is chosen on the out-of-fold AUROC over every training answer and P(correct) is the mean of the
    heads'. A single head's AUROC moved by 0.006-0.013 (standard deviation over seeds) on the default
    study's cells, as much as bf16 against fp32 features; ten heads cut that to 0.000-0.003 (README,
    "Performance"). ``folds: 1`` is one head with ``val_fraction`` of the answers held out.
    """

    layer: Literal["auto", "last"] | int = "auto"
    hidden_size: int = Field(64, ge=0, description="0: a linear (logistic) head")
    dropout: float = Field(0.1, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(20, ge=1)
    folds: int = Field(10, ge=1, description="heads in the ensemble, one per fold; 1: one head, val_fraction held out")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="held out when folds is 1")
