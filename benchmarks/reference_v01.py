"""calibtune 0.1's shared-prefix cloze scoring, kept to time today's path against it in the same run.

Each question's prompt is run once with ``use_cache=True``, its key/value cache copied
once per option (``reorder_cache``), and the options run against the copies. Questions
too long for a sliding window are scored pair by pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from calibtune.forward import Encoded, continuation_logprobs, length_batches, lm_head_logits, pad_ids, sliding_window


def option_logprobs(
    lm, contexts: Sequence[Sequence[int]], options: Sequence[Sequence[Sequence[int]]],
    batch_size: int = 16, progress=None,
) -> list[np.ndarray]:
    """Summed log-likelihood of each option continuing its question's context.

    The context is run once per question and its key/value cache shared by the options,
    which takes about a third of the tokens of scoring every (context, option) pair apart.
    Returns one array of option scores per question. Questions too long for a model's
    sliding attention window are scored pair by pair instead.
    """
    out: list[np.ndarray] = [np.zeros(len(opts)) for opts in options]
    window = sliding_window(lm.model)
    total = [len(c) + max(len(o) for o in opts) for c, opts in zip(contexts, options)]
    long = [i for i, n in enumerate(total) if window and n > window]
    if long:
        pairs = [Encoded(tuple(contexts[i]) + tuple(o), len(o)) for i in long for o in options[i]]
        sums, _ = continuation_logprobs(lm, pairs)
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
