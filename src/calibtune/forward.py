"""Batched forward passes without gradients: the one batching path of calibtune.

Everything that reads a model without training it goes through ``tree_pass``. A *tree*
is a context followed by branches that each continue it: a multiple-choice question
(the prompt, and one branch per option) or one text (a context and a single branch). A
tree is packed into one row, context then every branch, with position ids that restart
each branch where the context ends and an attention mask under which a branch sees the
context and itself only; so the context is read once however many options follow it, and
no key/value cache is copied per option. Trees are sorted by length and batched by a
token budget (padding included), the language-model head runs only where a branch
token is predicted, and the hidden states of chosen layers are gathered at each branch's
last token when asked for (the Probe's features).

Models with sliding-window attention read a tree in one row only when every branch fits
the window; otherwise each branch is read as its own sequence, under the model's own masks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from calibtune.costs import DEFAULT_TOKEN_BUDGET, HEAD_CHUNK
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


@dataclass(frozen=True)
class Tree:
    """A context and the branches that continue it (each a tuple of token ids)."""

    context: tuple[int, ...]
    branches: tuple[tuple[int, ...], ...]

    @property
    def packed_length(self) -> int:
        """Tokens in the packed row: the context once, then every branch."""
        return len(self.context) + sum(len(b) for b in self.branches)

    @property
    def longest(self) -> int:
        """The longest sequence the tree stands for: the context and its longest branch."""
        return len(self.context) + max(len(b) for b in self.branches)


@dataclass(frozen=True)
class TreeOutputs:
    """Per tree: the summed log-probability of each branch's tokens (``logprobs[i][j]``), and the hidden
    states ``[n_branches, n_layers, hidden]`` at each branch's last token (``features[i]``), when asked for."""

    logprobs: list[np.ndarray] | None
    features: list[np.ndarray] | None


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
    """Indices grouped into batches of similar length, longest first: at most ``batch_size`` sequences and,
    padding included, ``max_tokens`` tokens per batch (a longer sequence goes alone)."""
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


def chosen_logprobs(logits: torch.Tensor, targets: torch.Tensor, cap: float | None = None,
                    work: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(logits)[i, targets[i]] of each row, soft-capped at ``cap`` first where the model does that;
    no gradients. Worked in place on one fp32 copy (``work``, an fp32 tensor of the logits' shape, where the
    caller keeps one): a vocabulary-wide temporary per step made Gemma's passes 2-3x slower once the process
    had trained adapters (measured)."""
    buf = logits.to(torch.float32, copy=True) if work is None else work.copy_(logits)
    if cap:
        buf.div_(cap).tanh_().mul_(cap)
    picked = buf.gather(1, targets[:, None])[:, 0]
    top = buf.amax(dim=-1, keepdim=True)
    return picked - top[:, 0] - buf.sub_(top).exp_().sum(dim=-1).log()


def head_into(head: torch.nn.Module, hidden: torch.Tensor, out: torch.Tensor) -> None:
    """``out = head(hidden)``, written in place where the head is a plain bias-free linear map (no temporary of a
    vocabulary per row)."""
    if isinstance(head, torch.nn.Linear) and head.bias is None and hidden.dtype == out.dtype:
        torch.mm(hidden, head.weight.t(), out=out)
    else:
        out.copy_(head(hidden))


class HeadScratch:
    """The LM head's output and its fp32 work copy, one chunk of rows each, kept across the batches of a pass.

    A vocabulary-wide tensor made afresh per batch is a fresh mapping of memory that the kernel hands over page
    by page on first touch: copying 256 x 262,144 bf16 logits to fp32 took 62-103 ms into a new tensor and 13 ms
    into a reused one (2-core EPYC, measured).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def rows(self, name: str, n: int, vocab: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """An ``n`` x ``vocab`` view of the buffer ``name``, grown (never shrunk) to hold it."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != vocab or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(n, vocab, dtype=dtype, device=device)
        return buf[:n]


def token_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor,
                   scratch: HeadScratch | None = None) -> torch.Tensor:
    """log p(target) at each row of ``hidden`` (final hidden states), the head run in chunks of rows; no
    gradients. ``scratch`` keeps the chunk's buffers for the next call."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    scratch = scratch or HeadScratch()
    vocab = head.weight.shape[0] if isinstance(head, torch.nn.Linear) else None
    out = []
    for start in range(0, hidden.shape[0], HEAD_CHUNK):
        rows = hidden[start:start + HEAD_CHUNK]
        if vocab is None:
            raw = head(rows)
        else:
            raw = scratch.rows("raw", rows.shape[0], vocab, rows.dtype, rows.device)
            head_into(head, rows, raw)
        work = scratch.rows("work", raw.shape[0], raw.shape[1], torch.float32, raw.device)
        out.append(chosen_logprobs(raw, targets[start:start + HEAD_CHUNK], cap, work))
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


def sliding_window(model) -> int | None:
    """The model's attention window, if it has one."""
    config = getattr(model.config, "text_config", None) or model.config
    return getattr(config, "sliding_window", None)


def tree_pass(lm: LoadedModel, trees: Sequence[Tree], score: bool = True, layers: Sequence[int] | None = None,
              token: str = "last", token_budget: int = DEFAULT_TOKEN_BUDGET, max_rows: int | None = None,
              progress: Progress | None = None, names: Sequence[str] | None = None) -> TreeOutputs:
    """Read every tree once: branch log-probabilities (``score``) and hidden states at ``layers`` at each branch's
    last token (``token="mean"``: averaged over the context and the branch; one-branch trees only). ``layers``
    index ``hidden_states`` (0 the embeddings, ``num_layers`` the last layer, after the final norm).
    ``progress(n)`` is called as trees finish; ``names`` name the trees in errors."""
    if token not in ("last", "mean"):
        raise ValueError(f"unknown token position '{token}': use last or mean")
    for tree in trees:
        if not tree.context or not tree.branches or not all(tree.branches):
            raise ValueError("every tree needs a context, at least one branch, and every branch a token")
        if token == "mean" and len(tree.branches) > 1:
            raise ValueError("mean pooling reads one branch per tree")
    check_lengths(lm, [t.longest for t in trees], names)
    window = sliding_window(lm.model)
    # A tree whose branches do not all fit the window is read branch by branch, as plain sequences.
    units: list[tuple[int, int | None, Tree]] = []  # (tree index, branch index or None for all, tree)
    for i, tree in enumerate(trees):
        if len(tree.branches) > 1 and window and tree.longest > window:
            units.extend((i, j, Tree(tree.context, (b,))) for j, b in enumerate(tree.branches))
        else:
            units.append((i, None, tree))
    logprobs = [np.zeros(len(t.branches)) for t in trees] if score else None
    features = ([np.zeros((len(t.branches), len(layers), lm.model.config.get_text_config().hidden_size),
                          dtype=np.float32) for t in trees] if layers else None)
    remaining = [len(t.branches) for t in trees]
    # Plain sequences and packed trees go in separate batches: a batch with one packed tree is read under a
    # custom mask, which a sequence longer than the sliding window must not be.
    groups = [[u for u in units if len(u[2].branches) == 1], [u for u in units if len(u[2].branches) > 1]]
    batches = [[group[k] for k in batch] for group in groups
               for batch in length_batches([u[2].packed_length for u in group], max_rows or len(group) or 1,
                                           token_budget)]
    scratch = HeadScratch()
    with torch.inference_mode():
        for chunk in batches:
            lp, feats = _read_batch(lm, [u[2] for u in chunk], score, layers, token, scratch)
            for row, (i, j, tree) in enumerate(chunk):
                where = slice(None) if j is None else slice(j, j + 1)
                if logprobs is not None:
                    logprobs[i][where] = lp[row]
                if features is not None:
                    features[i][where] = feats[row]
                remaining[i] -= len(tree.branches)
                if progress and remaining[i] == 0:
                    progress(1)
    return TreeOutputs(logprobs, features)


def _read_batch(lm: LoadedModel, trees: list[Tree], score: bool, layers: Sequence[int] | None, token: str,
                scratch: HeadScratch):
    """One forward pass over packed trees: per-branch summed log-probabilities and last-token features."""
    width = max(t.packed_length for t in trees)
    n = len(trees)
    ids = np.full((n, width), lm.tokenizer.pad_token_id, dtype=np.int64)
    position = np.zeros((n, width), dtype=np.int64)
    segment = np.full((n, width), -1, dtype=np.int64)  # 0 context, k + 1 branch k, -1 padding
    pred_rows, pred_cols, targets, owners = [], [], [], []  # scored positions and the branch each belongs to
    last_rows, last_cols = [], []
    owner = 0
    for row, tree in enumerate(trees):
        c = len(tree.context)
        ids[row, :c], position[row, :c], segment[row, :c] = tree.context, np.arange(c), 0
        start = c
        for k, branch in enumerate(tree.branches):
            m = len(branch)
            ids[row, start:start + m] = branch
            position[row, start:start + m] = np.arange(c, c + m)
            segment[row, start:start + m] = k + 1
            # the first branch token is predicted by the context's last token, the others by the one before
            pred_rows.extend([row] * m)
            pred_cols.extend([c - 1, *range(start, start + m - 1)])
            targets.extend(branch)
            owners.extend([owner] * m)
            last_rows.append(row)
            last_cols.append(start + m - 1)
            owner += 1
            start += m
    device = lm.device
    seg = torch.from_numpy(segment).to(device)
    plain = all(len(t.branches) == 1 for t in trees)
    if plain:  # plain sequences: the model's own causal (and sliding-window) masks
        kwargs = {"attention_mask": (seg >= 0).long()}
    else:
        idx = torch.arange(width, device=device)
        valid = seg >= 0
        allowed = ((idx[None, None, :] <= idx[None, :, None])
                   & ((seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])) & valid[:, None, :])
        allowed |= torch.eye(width, dtype=torch.bool, device=device)[None] & ~valid[:, :, None]  # no empty row
        # additive (0 or the dtype's lowest): SDPA reads it as it reads booleans, and eager attention, which adds
        # the mask to the scores, reads it right (booleans would be added as 0 and 1: every option wrongly scored)
        additive = torch.zeros(allowed.shape, dtype=lm.dtype, device=device).masked_fill_(~allowed,
                                                                                         torch.finfo(lm.dtype).min)
        kwargs = {"attention_mask": additive[:, None], "position_ids": torch.from_numpy(position).to(device)}
    out = lm.model.get_decoder()(input_ids=torch.from_numpy(ids).to(device), output_hidden_states=bool(layers),
                                 **kwargs)
    sums = None
    if score:
        hidden = out.last_hidden_state[torch.tensor(pred_rows, device=device), torch.tensor(pred_cols, device=device)]
        lp = token_logprobs(lm.model, hidden, torch.tensor(targets, device=device), scratch)
        totals = torch.zeros(owner, dtype=torch.float64, device=device).index_add_(
            0, torch.tensor(owners, device=device), lp.double()).cpu().numpy()
        sums, at = [], 0
        for tree in trees:
            sums.append(totals[at:at + len(tree.branches)])
            at += len(tree.branches)
    feats = None
    if layers:
        if token == "mean":  # one branch per tree: the average over the row's tokens
            weights = (seg >= 0).to(out.last_hidden_state.dtype)[:, :, None]
            stacked = torch.stack([(out.hidden_states[layer] * weights).sum(1) / weights.sum(1) for layer in layers],
                                  dim=1).float().cpu().numpy()
        else:
            r, c = torch.tensor(last_rows, device=device), torch.tensor(last_cols, device=device)
            stacked = torch.stack([out.hidden_states[layer][r, c] for layer in layers], dim=1).float().cpu().numpy()
        feats, at = [], 0
        for tree in trees:
            feats.append(stacked[at:at + len(tree.branches)])
            at += len(tree.branches)
    return sums, feats


def continuation_logprobs(lm: LoadedModel, seqs: Sequence[Encoded], token_budget: int = DEFAULT_TOKEN_BUDGET,
                          progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-likelihood of each sequence's continuation (its last ``n_target`` tokens), and its token count."""
    trees = [Tree(s.ids[:-s.n_target], (s.ids[-s.n_target:],)) for s in seqs]
    out = tree_pass(lm, trees, token_budget=token_budget, progress=progress)
    return np.array([x[0] for x in out.logprobs]), np.array([s.n_target for s in seqs], dtype=np.int64)


@contextmanager
def decoder_up_to(lm: LoadedModel, n_layers: int | None, final_norm: bool = False, start: int = 0) -> Iterator:
    """The decoder with only its blocks ``start`` to ``n_layers`` - 1 (all when None and 0), so the layers outside
    cost nothing.

    Without ``final_norm`` its ``last_hidden_state`` is ``hidden_states[n_layers]`` of the whole model (no
    final norm); with it, that state through the final norm, ready for the LM head (a read-out at that
    layer). With ``start``, it is called with ``inputs_embeds``: the states entering block ``start``
    (``hidden_states[start]`` of the whole model), each block keeping its own attention type. The full decoder
    is put back on exit (the blocks are the same modules: adapters on them stay).
    """
    decoder = lm.model.get_decoder()
    stop = lm.num_layers if n_layers is None else min(n_layers, lm.num_layers)
    if start == 0 and stop == lm.num_layers:
        yield decoder
        return
    layers, norm, config = decoder.layers, decoder.norm, decoder.config
    types = getattr(config, "layer_types", None)  # indexed by position in the loop (Gemma-3, Qwen-2, ...)
    decoder.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if isinstance(types, list):
        config.layer_types = types[start:stop]
    if not final_norm:
        decoder.norm = torch.nn.Identity()
    try:
        yield decoder
    finally:
        decoder.layers, decoder.norm = layers, norm
        if isinstance(types, list):
            config.layer_types = types


@contextmanager
def differentiable_attention(lm: LoadedModel) -> Iterator[None]:
    """Eager attention on the CPU for passes that will be differentiated; SDPA everywhere else.

    torch's CPU flash-attention backward is slow: in a SmolLM2 LoRA + Prompt step at batch 8 it took 6.9 ms
    per layer against 0.8 ms for its forward, 22% of the step; eager attention's backward is a few products,
    and the step went from 0.92 to 0.72 s (Gemma-3: 0.82 to 0.80 s). On a GPU SDPA's kernels are fast and
    eager attention would keep every layer's score matrix for the backward, so GPUs keep SDPA. The graph
    records the attention used in the forward, so ``backward()`` may run after the context has closed.
    """
    current = getattr(lm.model.config, "_attn_implementation", None)
    if lm.device.type != "cpu" or current != "sdpa":
        yield
        return
    lm.model.set_attn_implementation("eager")
    try:
        yield
    finally:
        lm.model.set_attn_implementation(current)
