"""The method registry: every uncertainty method calibtune knows, by name.

Each method lives in its own module and is registered here with one line. The order
is the order of tables, figures and the study's cells: methods with an estimator model
first (one cell per E x T), then those read off the answering model (one per T).
"""

from __future__ import annotations

from calibtune.errors import CalibtuneError
from calibtune.methods import (
    likelihood,
    lora,
    lora_prompt,
    lora_prompt_readout,
    option_confidence,
    probe,
    probe_last,
    sampling,
    verbalized,
    zero_shot,
)
from calibtune.methods.base import CellContext, CellScores, FeatureTable, Method
from calibtune.settings import suggest

METHODS: dict[str, Method] = {m.name: m for m in (
    probe.METHOD,
    probe_last.METHOD,
    lora.METHOD,
    lora_prompt.METHOD,
    lora_prompt_readout.METHOD,
    zero_shot.METHOD,
    option_confidence.METHOD,
    likelihood.LIKELIHOOD,
    likelihood.PERPLEXITY,
    verbalized.METHOD,
    sampling.METHOD,
)}

MATRIX_METHODS = tuple(name for name, m in METHODS.items() if m.scope == "matrix")
ANSWERER_METHODS = tuple(name for name, m in METHODS.items() if m.scope == "answerer")


def get_method(name: str) -> Method:
    """The registered method of that name; an unknown name is a one-line error listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise CalibtuneError(f"unknown method '{name}'{suggest(name, list(METHODS))}; known: "
                             f"{', '.join(METHODS)}") from None


def method_label(name: str) -> str:
    """The display name of a method in tables and figures, or ``name`` itself when it is not registered."""
    method = METHODS.get(name)
    return method.label if method else name


__all__ = ["ANSWERER_METHODS", "MATRIX_METHODS", "METHODS", "CellContext", "CellScores", "FeatureTable", "Method",
           "get_method", "method_label"]
