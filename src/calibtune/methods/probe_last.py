"""The paper's Probe: the same head, on the last layer's hidden state only.

Reported beside the Probe that picks its layer on validation: the last layer is one of the
candidate layers, so this cell reads the features the Probe's cell reads and costs a head fit.
"""

from __future__ import annotations

from typing import Literal

from calibtune.estimator_settings import ProbeConfig
from calibtune.methods.base import Method
from calibtune.methods.probe import make_cell


class ProbeLastConfig(ProbeConfig):
    """The Probe's settings, its layer fixed to the last one."""

    layer: Literal["last"] = "last"


METHOD = Method(name="probe_last", label="Probe (last layer)", make_cell=make_cell, config=ProbeLastConfig,
                study_settings=("features",))
