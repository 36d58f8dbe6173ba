"""Hidden-state features of "question + proposed answer" texts, as read by an estimator model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from calibtune.forward import encode_texts, hidden_features
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar
from calibtune.prompts import format_prompt
from calibtune.records import Question

AUTO_DEPTHS = (0.25, 0.5, 0.75, 1.0)


def candidate_layers(num_layers: int, spec: str | Sequence[int] = "auto") -> list[int]:
    """Layers to extract: ``auto`` is 1/4, 1/2, 3/4 of the depth and the last layer.

    Layer ``k`` is the output of the k-th transformer block (``num_layers`` is the last,
    after the final norm); 0 would be the embeddings.
    """
    if spec == "auto":
        return sorted({max(1, round(num_layers * d)) for d in AUTO_DEPTHS})
    layers = sorted(set(int(x) for x in spec))
    bad = [x for x in layers if not 0 <= x <= num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{num_layers}")
    return layers


def proposed_answer_text(question: Question, answer: str, prompt: str, option_prefix: str = " ") -> str:
    """The text the estimator reads: the question prompt followed by the proposed answer."""
    return format_prompt(question, prompt) + option_prefix + answer


def extract_features(
    lm: LoadedModel, texts: Sequence[str], layers: Sequence[int], token: str = "last", batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Hidden states ``[n, len(layers), hidden]`` of each text; a progress bar unless ``progress`` is given."""
    seqs = encode_texts(lm.tokenizer, texts)
    if progress is not None:
        return hidden_features(lm, seqs, layers, token=token, batch_size=batch_size, progress=progress)
    with progress_bar(f"features {lm.name}", len(seqs)) as advance:
        return hidden_features(lm, seqs, layers, token=token, batch_size=batch_size, progress=advance)
