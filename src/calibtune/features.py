"""Hidden-state features of "question + proposed answer", as an estimator model reads them (the Probe's input)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from calibtune.forward import DEFAULT_TOKEN_BUDGET, Encoded, Tree, tree_pass
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar

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


def answer_trees(lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str]) -> list[Tree]:
    """Each (question prompt, proposed answer with its separator) as a one-branch tree, tokenized apart as
    cloze answering tokenizes a prompt and an option, so the answering pass and this one read the same tokens."""
    if not prompts:
        return []
    contexts = lm.tokenizer(list(prompts))["input_ids"]
    branches = lm.tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    trees = []
    for context, branch in zip(contexts, branches):
        if not branch:  # an empty answer: the text is the prompt, read to its last token
            context, branch = context[:-1], context[-1:]
        trees.append(Tree(tuple(context), (tuple(branch),)))
    return trees


def answer_sequences(lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str]) -> list[Encoded]:
    """Each "prompt + answer" as one token sequence, tokenized as ``answer_trees`` does (for LoRA's head)."""
    return [Encoded(t.context + t.branches[0]) for t in answer_trees(lm, prompts, answers)]


def extract_features(
    lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str], layers: Sequence[int], token: str = "last",
    token_budget: int = DEFAULT_TOKEN_BUDGET, max_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Hidden states ``[n, len(layers), hidden]`` of each "prompt + answer"; a progress bar unless ``progress``."""
    trees = answer_trees(lm, prompts, answers)

    def read(advance) -> np.ndarray:
        out = tree_pass(lm, trees, score=False, layers=layers, token=token, token_budget=token_budget,
                        max_rows=max_rows, progress=advance)
        if not trees:
            return np.zeros((0, len(layers), lm.model.config.get_text_config().hidden_size), dtype=np.float32)
        return np.stack([f[0] for f in out.features])

    if progress is not None:
        return read(progress)
    with progress_bar(f"features {lm.name}", len(trees)) as advance:
        return read(advance)
