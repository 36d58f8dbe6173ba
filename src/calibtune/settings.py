"""The base of every settings model: unknown keys are refused, values are frozen.

Study-level settings (``calibtune.config``) and each method's own settings
(``calibtune.methods.<name>``) derive from it. Nothing here imports torch, so a
config can be read and checked without loading the model stack.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

# dtype names a config may use, and the torch dtype each means (by its torch name; no torch import here).
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16"}


class Settings(BaseModel):
    """A strict, frozen pydantic model."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def suggest(word: str, options: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or an empty string."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
