"""Batched forward passes: continuation log-likelihoods and hidden-state features.

This is the one batching path of calibtune. Sequences are sorted by length so that a
batch carries little padding, right-padded, and run without gradients. The language
model head is applied only at the positions whose logits are needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from calibtune.errors import CalibtuneError
from calibtune.models import LoadedModel, context_limit

Progress = Callable[[int], None]


def check_lengths(lm: LoadedModel, lengths: Sequence[int], names: Sequence[str] | None = None,
                  reserve: int = 0) -> None:
    """Refuse, in one line, a sequence longer than the model reads (``reserve`` tokens more are to be generated).

    A longer sequence would be silently cut or run past the model's position embeddings;
    the study stops instead and names the question, so it can be left out.
    """
    limit = context_limit(lm)
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n + reserve > limit:
            what = f"question {names[i]}" if names is not None else f"sequence {i + 1} of {len(lengths)}"
            extra = f" and {reserve} more to generate" if reserve else ""
            raise CalibtuneError(f"{what} takes {n} tokens{extra}, more than model '{lm.name}' reads ({limit}): "
                                 "leave it out of the study (a selection's start/stop) or use a model with a "
                                 "longer context")


@dataclass(frozen=True)
class Encoded:
    """Token ids of one sequence; the last ``n_target`` tokens are the scored continuation."""

    ids: tuple[int, ...]
    n_target: int = 0


def encode_continuations(tokenizer, contexts: Sequence[str], continuations: Sequence[str]) -> list[Encoded]:
    """Tokenize context and continuation apart and join the ids (as lm-evaluation-harness does).

    The context gets the tokenizer's special tokens (BOS for Gemma), the continuation none,
    so the continuation's tokens are exactly those that are scored.
    """
    context_ids = _tokenize(tokenizer, list(contexts), special=True)
    target_ids = _tokenize(tokenizer, list(continuations), special=False)
    out = []
    for ctx, tgt, text in zip(context_ids, target_ids, continuations):
        if not tgt:
            raise ValueError(f"continuation {text!r} has no tokens")
        out.append(Encoded(tuple(ctx) + tuple(tgt), len(tgt)))
    return out


def encode_texts(tokenizer, texts: Sequence[str]) -> list[Encoded]:
    """Tokenize whole texts, special tokens included."""
    return [Encoded(tuple(ids)) for ids in _tokenize(tokenizer, list(texts), special=True)]


def _tokenize(tokenizer, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=special)["input_ids"]


def length_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length, longest first."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        if batch and (len(batch) >= batch_size or (max_tokens and longest * (len(batch) + 1) > max_tokens)):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def pad_ids(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id sequences into ``(input_ids, attention_mask)`` tensors."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def lm_head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head (and Gemma's final soft-capping) on selected hidden states."""
    return finish_logits(model, model.get_output_embeddings()(hidden))


def finish_logits(model, raw: torch.Tensor) -> torch.Tensor:
    """Raw LM-head outputs (in the model's dtype) as float logits, soft-capped where the model does that."""
    logits = raw.float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def continuation_logprobs(
    lm: LoadedModel, seqs: Sequence[Encoded], batch_size: int = 16, max_tokens: int | None = 4096,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood of each sequence's continuation, and its token count."""
    check_lengths(lm, [len(s.ids) for s in seqs])
    sums = np.zeros(len(seqs), dtype=np.float64)
    counts = np.array([s.n_target for s in seqs], dtype=np.int64)
    pad_id = lm.tokenizer.pad_token_id
    base = lm.model.get_decoder()
    with torch.inference_mode():
        for batch in length_batches([len(s.ids) for s in seqs], batch_size, max_tokens):
            items = [seqs[i] for i in batch]
            ids, mask = pad_ids([s.ids for s in items], pad_id, lm.device)
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            rows, cols, targets = [], [], []
            for row, item in enumerate(items):
                end = len(item.ids)
                for pos in range(end - item.n_target, end):
                    rows.append(row)
                    cols.append(pos - 1)  # the logits at pos-1 predict the token at pos
                    targets.append(item.ids[pos])
            logp = torch.log_softmax(lm_head_logits(lm.model, hidden[rows, cols]), dim=-1)
            token_lp = logp[torch.arange(len(targets)), torch.tensor(targets, device=logp.device)].cpu().numpy()
            start = 0
            for row, index in enumerate(batch):
                n = items[row].n_target
                sums[index] = float(token_lp[start : start + n].sum())
                start += n
            if progress:
                progress(len(batch))
    return sums, counts


def _sliding_window(model) -> int | None:
    config = getattr(model.config, "text_config", None) or model.config
    return getattr(config, "sliding_window", None)


def option_logprobs(
    lm: LoadedModel, contexts: Sequence[Sequence[int]], options: Sequence[Sequence[Sequence[int]]],
    batch_size: int = 16, progress: Progress | None = None, names: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Summed log-likelihood of each option continuing its question's context.

    The context is run once per question and its key/value cache shared by the options,
    which takes about a third of the tokens of scoring every (context, option) pair apart.
    Returns one array of option scores per question. Questions too long for a model's
    sliding attention window are scored pair by pair instead.
    """
    out: list[np.ndarray] = [np.zeros(len(opts)) for opts in options]
    window = _sliding_window(lm.model)
    total = [len(c) + max(len(o) for o in opts) for c, opts in zip(contexts, options)]
    check_lengths(lm, total, names)
    long = [i for i, n in enumerate(total) if window and n > window]
    if long:
        pairs = [Encoded(tuple(contexts[i]) + tuple(o), len(o)) for i in long for o in options[i]]
        sums, _ = continuation_logprobs(lm, pairs, batch_size=batch_size)
        start = 0
        for i in long:
            out[i] = sums[start : start + len(options[i])]
            start += len(options[i])
            if progress:
                progress(1)
    short = [i for i in range(len(contexts)) if i not in set(long)]
    pad_id = lm.tokenizer.pad_token_id
    base = lm.model.get_decoder()
    with torch.inference_mode():
        for chunk in length_batches([total[i] for i in short], batch_size, None):
            batch = [short[j] for j in chunk]
            ids, mask = pad_ids([contexts[i] for i in batch], pad_id, lm.device)
            lengths = mask.sum(dim=1)
            positions = torch.arange(ids.shape[1], device=lm.device).expand_as(ids)
            ctx = base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
            last = ctx.last_hidden_state[torch.arange(len(batch)), lengths - 1]  # predicts each option's first token
            owner = [b for b, i in enumerate(batch) for _ in options[i]]
            owner_t = torch.tensor(owner, device=lm.device)
            cache = ctx.cache
            cache.reorder_cache(owner_t)  # one cache row per option
            flat = [Encoded(tuple(o)) for i in batch for o in options[i]]
            opt_ids, opt_mask = pad_ids([s.ids for s in flat], pad_id, lm.device)
            opt_pos = lengths[owner_t][:, None] + torch.arange(opt_ids.shape[1], device=lm.device)[None, :]
            hidden = base(input_ids=opt_ids, attention_mask=torch.cat([mask[owner_t], opt_mask], dim=1),
                          position_ids=opt_pos, cache=cache).last_hidden_state
            vectors, targets = [], []
            for row, seq in enumerate(flat):
                vectors.append(last[owner[row]])
                vectors.extend(hidden[row, : len(seq.ids) - 1])
                targets.extend(seq.ids)
            logp = torch.log_softmax(lm_head_logits(lm.model, torch.stack(vectors)), dim=-1)
            token_lp = logp[torch.arange(len(targets)), torch.tensor(targets, device=logp.device)].cpu().numpy()
            start = 0
            for i in batch:
                for k, opt in enumerate(options[i]):
                    out[i][k] = float(token_lp[start : start + len(opt)].sum())
                    start += len(opt)
            if progress:
                progress(len(batch))
    return out


def hidden_features(
    lm: LoadedModel, seqs: Sequence[Encoded], layers: Sequence[int], token: str = "last",
    batch_size: int = 16, max_tokens: int | None = 4096, progress: Progress | None = None,
) -> np.ndarray:
    """Hidden states of each sequence at the given layers: array ``[n, len(layers), hidden]``.

    ``layers`` index ``hidden_states`` (0 is the embedding output, ``num_layers`` the last
    layer). ``token`` is ``last`` (the final token, as in the paper) or ``mean`` (the
    average over all tokens).
    """
    if token not in ("last", "mean"):
        raise ValueError(f"unknown token position '{token}': use last or mean")
    check_lengths(lm, [len(s.ids) for s in seqs])
    out: np.ndarray | None = None
    pad_id = lm.tokenizer.pad_token_id
    base = lm.model.get_decoder()
    with torch.inference_mode():
        for batch in length_batches([len(s.ids) for s in seqs], batch_size, max_tokens):
            items = [seqs[i] for i in batch]
            ids, mask = pad_ids([s.ids for s in items], pad_id, lm.device)
            states = base(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            stacked = torch.stack([states[layer] for layer in layers], dim=1).float()  # [b, L, t, h]
            if token == "last":
                last = mask.sum(dim=1) - 1
                feats = stacked[torch.arange(len(items)), :, last]
            else:
                weights = mask[:, None, :, None].to(stacked.dtype)
                feats = (stacked * weights).sum(dim=2) / weights.sum(dim=2)
            feats = feats.cpu().numpy()
            if out is None:
                out = np.zeros((len(seqs), len(layers), feats.shape[-1]), dtype=np.float32)
            out[batch] = feats
            if progress:
                progress(len(batch))
    if out is None:
        return np.zeros((0, len(layers), 0), dtype=np.float32)
    return out
