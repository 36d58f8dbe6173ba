"""calibtune's variant of LoRA + Prompt: the query's answer read out at an intermediate layer.

The hidden state after ``readout_layer`` layers goes through the final norm and the LM
head, adapters sit on the layers below it, and the forward and backward passes stop
there. At these model sizes a middle layer carries more of the signal than the last one
(the Probe's layer choice shows it); ``auto`` takes the layer the Probe would choose on
the same training answers. Labelled apart from the paper's method in every table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from calibtune.estimator_settings import LoraPromptConfig, ProbeConfig
from calibtune.methods.base import CellContext, CellScores, Method
from calibtune.methods.lora_prompt import train_cell

LABEL = "LoRA + Prompt, mid-layer read-out"


class LoraPromptReadoutConfig(LoraPromptConfig):
    """LoRA + Prompt's settings, and where the query's answer is read out."""

    readout_layer: Literal["auto"] | int = Field("auto", description="auto: the Probe's choice of layer; or a number")


def readout_layer(ctx: CellContext, settings: LoraPromptReadoutConfig) -> int:
    """The layer to read out at: the one given, or the layer a Probe with the default settings chooses on E's
    features of T's training answers (the Probe cell's own choice, unless its settings were changed; this
    method's cells depend on its own settings only)."""
    if settings.readout_layer != "auto":
        return int(settings.readout_layer)
    from calibtune.estimators.probe import ProbeEstimator

    table = ctx.probe_features()
    train = ctx.inputs.train
    probe = ProbeEstimator(ProbeConfig(), layers=table.layers, seed=ctx.study.seed)
    return int(probe.fit(table.of(train), ctx.labels(train)).layer_)


def make_cell(ctx: CellContext) -> CellScores:
    """Train adapters below the read-out layer; score T's evaluation answers and the held-out ones."""
    settings = ctx.settings
    assert isinstance(settings, LoraPromptReadoutConfig)
    return train_cell(ctx, readout_layer(ctx, settings), LABEL)


METHOD = Method(name="lora_prompt_readout", label=LABEL, make_cell=make_cell, config=LoraPromptReadoutConfig,
                study_settings=("features",), data_parallel=True)
