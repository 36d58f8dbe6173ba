"""The research-code way of each model pass, to measure calibtune's passes against in the same run.

fp32, one question (or example) at a time, every option scored with its whole context,
the language-model head at every position, the base model recomputed with the adapters
disabled at every training step. These are what the paper's scripts and most notebooks
do; they are correct, and slow.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch


def cloze(lm, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[np.ndarray]:
    """Summed log-probability of each option after its prompt, one (prompt + option) sequence at a time."""
    out = []
    with torch.no_grad():
        for prompt, opts in zip(prompts, options):
            context = lm.tokenizer(prompt)["input_ids"]
            scores = []
            for option in opts:
                target = lm.tokenizer(option, add_special_tokens=False)["input_ids"]
                logits = lm.model(torch.tensor([context + target], device=lm.device)).logits[0].float()
                logp = torch.log_softmax(logits, dim=-1)
                scores.append(sum(float(logp[len(context) + i - 1, t]) for i, t in enumerate(target)))
            out.append(np.array(scores))
    return out


def features(lm, prompts: Sequence[str], answers: Sequence[str], layers: Sequence[int]) -> np.ndarray:
    """Hidden states at ``layers`` of each prompt + answer at its last token, one text at a time, full model."""
    out = []
    with torch.no_grad():
        for prompt, answer in zip(prompts, answers):
            ids = lm.tokenizer(prompt)["input_ids"] + lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
            states = lm.model(torch.tensor([ids], device=lm.device), output_hidden_states=True).hidden_states
            out.append(np.stack([states[k][0, -1].float().cpu().numpy() for k in layers]))
    return np.stack(out)


def generate(lm, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers, one prompt at a time, with transformers' generate."""
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([lm.tokenizer(prompt)["input_ids"]], device=lm.device)
            result = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=lm.tokenizer.pad_token_id)
            out.append(result[0, ids.shape[1]:].tolist())
    return out


def _with_lora(lm):
    """The research code's adapters: rank 8 on the query and value projections, every layer."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(lm.model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.1,
                                                   target_modules=["q_proj", "v_proj"]))


def train_lora_prompt(lm, seqs, labels: np.ndarray, token_ids: Sequence[int], steps: int, kl_weight: float = 1.0,
                      learning_rate: float = 1e-4) -> float:
    """LoRA + Prompt training one example per step: full logits everywhere, the base model's by a second pass
    with the adapters off; returns the last loss."""
    peft_model = _with_lora(lm)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=learning_rate)
    peft_model.train()
    loss = torch.tensor(0.0)
    try:
        for step in range(steps):
            seq = seqs[step % len(seqs)]
            ids = torch.tensor([seq.ids], device=lm.device)
            logits = peft_model(input_ids=ids).logits[0].float()
            two_way = logits[-1, list(token_ids)]
            target = torch.tensor([int(labels[step % len(seqs)])], device=lm.device)
            loss = torch.nn.functional.cross_entropy(two_way[None], target)
            start, end = seq.answer
            with torch.no_grad(), peft_model.disable_adapter():
                base = peft_model(input_ids=ids).logits[0].float()
            log_q = torch.log_softmax(logits[start - 1:end - 1], -1)
            log_p = torch.log_softmax(base[start - 1:end - 1], -1)
            loss = loss + kl_weight * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        peft_model.unload()
        lm.model.requires_grad_(False)
        lm.model.eval()
    return float(loss.detach())


def train_lora_head(lm, seqs, labels: np.ndarray, layer: int, steps: int, learning_rate: float = 1e-4) -> float:
    """LoRA with a head, one example per step, the whole model run (head and all layers) to read one layer."""
    peft_model = _with_lora(lm)
    hidden = lm.model.config.get_text_config().hidden_size
    head = torch.nn.Sequential(torch.nn.Linear(hidden, 64), torch.nn.GELU(), torch.nn.Linear(64, 1)).to(lm.device)
    params = [p for p in peft_model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=learning_rate)
    peft_model.train()
    loss = torch.tensor(0.0)
    try:
        for step in range(steps):
            seq = seqs[step % len(seqs)]
            ids = torch.tensor([seq.ids], device=lm.device)
            states = peft_model(input_ids=ids, output_hidden_states=True).hidden_states
            logit = head(states[layer][0, -1].float())
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logit, torch.tensor([float(labels[step % len(seqs)])], device=lm.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        peft_model.unload()
        lm.model.requires_grad_(False)
        lm.model.eval()
    return float(loss.detach())
