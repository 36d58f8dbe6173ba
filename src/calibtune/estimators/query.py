"""The uncertainty query: ask the model whether the proposed answer is correct.

After "question + proposed answer" the query asks "Is the proposed answer correct?" with
two options (``calibtune.prompts.DEFAULT_QUERY``); P(correct) is the probability of the
"yes" option's first token, renormalised over the two options' first tokens. The
zero-shot query uses the base model; LoRA + Prompt trains adapters to answer it well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from calibtune.errors import CalibtuneError


def option_token_ids(tokenizer, prompt: str, options: Sequence[str]) -> tuple[int, ...]:
    """The first token of each option when it follows ``prompt``.

    Found by tokenizing the prompt with and without each option and taking the first token
    after the common prefix, which works whether the tokenizer folds the leading space into
    the word (byte-level BPE: "Ġyes") or marks it (SentencePiece: "▁yes").
    """
    base = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for option in options:
        full = tokenizer(prompt + option, add_special_tokens=False)["input_ids"]
        common = 0
        while common < min(len(base), len(full)) and base[common] == full[common]:
            common += 1
        if common >= len(full):
            raise CalibtuneError(f"query option {option!r} adds no token after the prompt")
        ids.append(int(full[common]))
    if len(set(ids)) != len(ids):
        raise CalibtuneError(f"query options {list(options)} start with the same token; choose options that differ "
                             "in their first token")
    return tuple(ids)


def two_way_logits(model, hidden: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Logits of the (no, yes) tokens from final hidden states, using only those LM-head rows, in fp32:
    in bf16 two logits round to steps of 0.06 to 0.125, and P(correct) to a few dozen values."""
    weight = model.get_output_embeddings().weight[list(token_ids)]
    logits = hidden.float() @ weight.float().T
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def p_yes(logits: torch.Tensor) -> np.ndarray:
    """P(yes) from (no, yes) logits, renormalised over the two."""
    return torch.softmax(logits.float(), dim=-1)[:, 1].detach().cpu().double().numpy()


def yes_logit(logits: torch.Tensor) -> np.ndarray:
    """The logit of ``p_yes``: the difference of the (no, yes) logits, in float64."""
    two = logits.detach().double().cpu()
    return (two[:, 1] - two[:, 0]).numpy()
