"""Open-ended answers: batched generation with the KV cache, greedy or sampled.

Prompts are left-padded into batches of similar length and run through transformers'
``generate`` (which keeps the KV cache between steps). Generation stops at the first
newline (or ``max_new_tokens``); the answer is the text before it, with the
log-probability of each of its tokens under the model (before any sampling processor).

Every vocabulary token whose text holds the stop string is passed to ``generate`` as an
extra end-of-sequence id, found once per tokenizer. transformers' ``stop_strings`` would do
the same but rebuilds its token tables on every ``generate`` call, which costs 0.7 s a
batch on Gemma's 262k vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from calibtune.forward import HeadScratch, check_lengths, chosen_logprobs, length_batches
from calibtune.models import LoadedModel

Progress = Callable[[int], None]


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated; every field is recorded with the answers."""

    max_new_tokens: int = 24
    stop: str = "\n"
    batch_size: int = 16


@dataclass(frozen=True)
class Generated:
    """One generated answer: its text (stripped, cut at the stop string), token ids and log-probabilities."""

    text: str
    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]


def encode_prompts(lm: LoadedModel, prompts: Sequence[str], special_tokens: bool = True) -> list[list[int]]:
    """Token ids of each prompt; ``special_tokens=False`` for texts that already carry them (chat templates)."""
    if not prompts:
        return []
    return lm.tokenizer(list(prompts), add_special_tokens=special_tokens)["input_ids"]


def generate_answers(lm: LoadedModel, prompt_ids: Sequence[Sequence[int]],
                     settings: GenerationSettings = GenerationSettings(), progress: Progress | None = None,
                     names: Sequence[str] | None = None) -> list[Generated]:
    """The greedy answer to each prompt (``names`` name the prompts in errors)."""
    return [samples[0] for samples in _generate(lm, prompt_ids, settings, 1, None, progress, names)]


def sample_answers(lm: LoadedModel, prompt_ids: Sequence[Sequence[int]], k: int, temperature: float = 1.0,
                   seed: int = 0, settings: GenerationSettings = GenerationSettings(),
                   progress: Progress | None = None) -> list[list[Generated]]:
    """``k`` answers sampled at ``temperature`` for each prompt (seeded: the same seed gives the same samples)."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"sampling needs k >= 1 and temperature > 0; got k={k}, temperature={temperature}")
    torch.manual_seed(seed)
    return _generate(lm, prompt_ids, settings, k, temperature, progress)


def _generate(lm: LoadedModel, prompt_ids: Sequence[Sequence[int]], settings: GenerationSettings, k: int,
              temperature: float | None, progress: Progress | None,
              names: Sequence[str] | None = None) -> list[list[Generated]]:
    from transformers import GenerationConfig

    check_lengths(lm, [len(p) for p in prompt_ids], names, reserve=settings.max_new_tokens)

    tok = lm.tokenizer
    eos = tok.eos_token_id
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=temperature is not None,
        temperature=temperature if temperature is not None else 1.0, top_k=0 if temperature is not None else None,
        top_p=1.0, num_return_sequences=k, pad_token_id=tok.pad_token_id,
        eos_token_id=_end_ids(tok, eos, settings.stop), output_logits=True, return_dict_in_generate=True,
    )
    out: list[list[Generated]] = [[] for _ in prompt_ids]
    # Fewer prompts per batch when sampling, so a batch holds about batch_size sequences.
    per_batch = max(1, settings.batch_size // k)
    scratch = HeadScratch()
    for batch in length_batches([len(p) for p in prompt_ids], per_batch, None):
        ids, mask = _left_pad([prompt_ids[i] for i in batch], tok.pad_token_id, lm.device)
        with torch.inference_mode():
            result = lm.model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = result.sequences[:, ids.shape[1]:]
        # log p of each chosen token, step by step, in one fp32 work buffer kept for every step and batch: no
        # [batch, steps, vocabulary] log-softmax copy, and no fresh vocabulary-wide tensor per step
        step0 = result.logits[0]
        work = scratch.rows("work", step0.shape[0], step0.shape[1], torch.float32, step0.device)
        chosen = torch.stack([chosen_logprobs(step, new[:, j], work=work) for j, step in enumerate(result.logits)],
                             dim=1)
        for row in range(new.shape[0]):
            out[batch[row // k]].append(_cut(tok, new[row].tolist(), chosen[row].tolist(), settings.stop, eos))
        if progress:
            progress(len(batch))
    return out


@functools.lru_cache(maxsize=4)  # a judge generates batch by batch: decode the vocabulary once per tokenizer
def stop_token_ids(tokenizer, stop: str) -> tuple[int, ...]:
    """Ids of the vocabulary tokens whose text contains ``stop`` (a stop string split across
    tokens is not among them; ``_cut`` still cuts the answer there)."""
    if not stop:
        return ()
    singles = [[i] for i in range(len(tokenizer))]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer decodes 6x faster
    texts = backend.decode_batch(singles, skip_special_tokens=False) if backend else tokenizer.batch_decode(singles)
    return tuple(i for i, text in enumerate(texts) if stop in text)


def _eos_list(eos: int | list[int] | None) -> list[int]:
    return list(eos) if isinstance(eos, list) else [eos] if eos is not None else []


def _end_ids(tokenizer, eos: int | list[int] | None, stop: str) -> list[int]:
    ends = _eos_list(eos)
    return ends + [i for i in stop_token_ids(tokenizer, stop) if i not in ends]


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(list(seq))
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def _cut(tokenizer, ids: list[int], logprobs: list[float], stop: str, eos: int | list[int] | None) -> Generated:
    """The answer before the stop string (or EOS), after any leading whitespace: an answer that starts with
    a newline (instruct models often do) is read from its first visible text. A token that holds the stop
    string is kept only if it also carries answer text before it."""
    eos_ids = set(_eos_list(eos))
    kept: list[int] = []
    text = ""
    for token in ids:
        if token in eos_ids:
            break
        candidate = tokenizer.decode(kept + [token], skip_special_tokens=True)
        visible = candidate.lstrip()
        if stop and stop in visible:
            head = candidate[: len(candidate) - len(visible)] + visible.split(stop, 1)[0]
            if head.strip() != text.strip():
                kept.append(token)
                text = head
            break
        kept.append(token)
        text = candidate
    return Generated(text.strip(), tuple(kept), tuple(logprobs[: len(kept)]))
