"""LoRA + Prompt (calibration tuning) and the zero-shot query.

The estimator model reads "question + proposed answer + query" and P(correct) is its
probability of "yes" (renormalised over no/yes). LoRA + Prompt trains LoRA adapters on
graded answers with cross-entropy, plus ``kl_weight`` times a divergence that keeps the
adapted model's next-token distribution on the answer text close to the base model's (the
base distribution comes from the same model with the adapter disabled). The zero-shot
query is the same prompt with no training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibtune.errors import CalibtuneError, first_line
from calibtune.estimators.adapters import (
    TrainLog,
    attach_lora,
    detach_lora,
    load_adapters,
    load_lora_state,
    lora_state,
    save_adapters,
    saved_config,
    target_modules,
    train_loop,
)
from calibtune.estimators.base import check_estimator_model
from calibtune.estimators.query import option_token_ids, p_yes, two_way_logits
from calibtune.estimators.splits import validation_split
from calibtune.forward import check_lengths, finish_logits, length_batches, lm_head_logits, pad_ids
from calibtune.methods.lora_prompt import LoraPromptConfig
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar

DIVERGENCES = ("js", "forward_kl", "reverse_kl")

# The base model's answer-token logits are computed once before training and kept in memory
# when they fit in this many bytes; otherwise each step recomputes them with the adapter disabled.
BASE_LOGITS_BUDGET = 4 * 2**30


@dataclass(frozen=True)
class QueryEncoded:
    """Token ids of prompt + answer + query; ``answer`` is the [start, end) span of the answer tokens."""

    ids: tuple[int, ...]
    answer: tuple[int, int]


def encode_queries(tokenizer, prompts: Sequence[str], answers: Sequence[str], query: str) -> list[QueryEncoded]:
    """Tokenize each (question prompt, proposed answer) with the query appended.

    The three pieces are tokenized apart (special tokens on the prompt only), so the
    answer's token span is exact.
    """
    if not prompts:
        return []
    p_ids = tokenizer(list(prompts))["input_ids"]
    a_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    q_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    return [QueryEncoded(tuple(p) + tuple(a) + tuple(q_ids), (len(p), len(p) + len(a))) for p, a in zip(p_ids, a_ids)]


def _pad(seqs: Sequence[QueryEncoded], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = pad_ids([s.ids for s in seqs], pad_id, device)
    return ids, mask, mask.sum(dim=1) - 1


def query_logits(lm: LoadedModel, seqs: Sequence[QueryEncoded], token_ids: Sequence[int]) -> torch.Tensor:
    """(no, yes) logits at the end of each sequence (gradients flow if enabled)."""
    ids, mask, last = _pad(seqs, lm.tokenizer.pad_token_id, lm.device)
    hidden = lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    return two_way_logits(lm.model, hidden[torch.arange(len(seqs)), last], token_ids)


def query_p_correct(lm: LoadedModel, seqs: Sequence[QueryEncoded], token_ids: Sequence[int],
                    batch_size: int = 16, description: str | None = None) -> np.ndarray:
    """P(yes) for each sequence, batched, without gradients."""
    check_lengths(lm, [len(s.ids) for s in seqs])
    out = np.zeros(len(seqs))
    with torch.inference_mode(), progress_bar(description or f"query {lm.name}", len(seqs)) as advance:
        for batch in length_batches([len(s.ids) for s in seqs], batch_size, None):
            out[batch] = p_yes(query_logits(lm, [seqs[i] for i in batch], token_ids))
            advance(len(batch))
    return out


def divergence(adapted_logits: torch.Tensor, base_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean divergence between next-token distributions (rows), from logits.

    ``js``: Jensen-Shannon; ``forward_kl``: KL(base || adapted); ``reverse_kl``: KL(adapted || base).
    """
    log_q = torch.log_softmax(adapted_logits.float(), dim=-1)
    log_p = torch.log_softmax(base_logits.float(), dim=-1)
    if kind == "forward_kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    if kind == "reverse_kl":
        return (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    if kind == "js":
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - np.log(2.0)
        return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1)).mean()
    raise CalibtuneError(f"unknown divergence '{kind}': use one of {', '.join(DIVERGENCES)}")


@dataclass
class LoraPromptEstimator:
    """Calibration tuning on an estimator model: ``fit`` / ``predict_proba`` / ``save`` / ``load``.

    Inputs are ``QueryEncoded`` sequences from ``encode_queries`` (built with this
    config's query). The model is wrapped with adapters by ``fit`` and unwrapped by
    ``release``; call ``release`` before training another estimator on the same model.
    ``estimate(questions, answers)`` scores plain texts, asked with the recorded prompt.
    """

    lm: LoadedModel
    config: LoraPromptConfig = field(default_factory=LoraPromptConfig)
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    log: TrainLog | None = None
    _peft: Any = field(default=None, repr=False)
    val_indices: np.ndarray | None = None

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The (no, yes) option tokens in this model's vocabulary."""
        return option_token_ids(self.lm.tokenizer, self.config.query, self.config.options)

    def fit(self, seqs: Sequence[QueryEncoded], labels: np.ndarray,
            checkpoint: Path | None = None) -> LoraPromptEstimator:
        """Train adapters on graded answers; a stratified ``val_fraction`` is held out for early stopping.

        With ``checkpoint`` (a folder), training saves its state there and resumes from it after a crash.
        """
        cfg = self.config
        if cfg.divergence not in DIVERGENCES:
            raise CalibtuneError(f"unknown divergence '{cfg.divergence}': use one of {', '.join(DIVERGENCES)}")
        y = np.asarray(labels).astype(np.int64)
        if len(np.unique(y)) < 2:
            raise CalibtuneError(f"cannot train LoRA + Prompt: all {len(y)} training labels are one class")
        check_lengths(self.lm, [len(s.ids) for s in seqs])
        idx_train, idx_val = validation_split(y, cfg.val_fraction, self.seed)
        self.val_indices = idx_val
        tokens = self.token_ids
        train_seqs = [seqs[i] for i in idx_train]
        base_cache = base_answer_logits(self.lm, train_seqs, cfg.batch_size * 2) if cfg.kl_weight > 0 else None
        self._peft = attach_lora(self.lm, cfg, self.seed)
        self.lm.model.train()
        params = [p for p in self._peft.parameters() if p.requires_grad]
        y_train = torch.from_numpy(y[idx_train])
        val_seqs, y_val = [seqs[i] for i in idx_val], torch.from_numpy(y[idx_val])

        def step_loss(batch: np.ndarray) -> torch.Tensor:
            items = [train_seqs[i] for i in batch]
            ids, mask, last = _pad(items, self.lm.tokenizer.pad_token_id, self.lm.device)
            hidden = self.lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = two_way_logits(self.lm.model, hidden[torch.arange(len(items)), last], tokens)
            loss = torch.nn.functional.cross_entropy(logits, y_train[batch].to(logits.device))
            if cfg.kl_weight > 0:
                rows, cols = _answer_positions(items)
                adapted = lm_head_logits(self.lm.model, hidden[rows, cols])
                if base_cache is not None:
                    base = finish_logits(self.lm.model, torch.cat([base_cache[i] for i in batch]))
                else:
                    with torch.no_grad(), self._peft.disable_adapter():
                        base_hidden = self.lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
                        base = lm_head_logits(self.lm.model, base_hidden[rows, cols])
                loss = loss + cfg.kl_weight * divergence(adapted, base, cfg.divergence)
            return loss

        def val_loss() -> float:
            self.lm.model.eval()
            total = 0.0
            with torch.no_grad():
                for batch in length_batches([len(s.ids) for s in val_seqs], cfg.batch_size * 2, None):
                    logits = query_logits(self.lm, [val_seqs[i] for i in batch], tokens)
                    total += float(torch.nn.functional.cross_entropy(logits, y_val[batch], reduction="sum"))
            self.lm.model.train()
            return total / len(val_seqs)

        self.log = train_loop(params, len(train_seqs), step_loss, val_loss, lambda: lora_state(self._peft),
                              lambda s: load_lora_state(self._peft, s), cfg, self.seed,
                              f"train LoRA + Prompt {self.meta.get('estimator_model', self.lm.name)} on "
                              f"{self.meta.get('trained_on', '?')}", checkpoint)
        self.lm.model.eval()
        return self

    def predict_proba(self, seqs: Sequence[QueryEncoded]) -> np.ndarray:
        """P(correct) for each sequence."""
        if self._peft is None:
            raise CalibtuneError("LoRA + Prompt is not fitted: call fit() or load() first")
        self.lm.model.eval()
        return query_p_correct(self.lm, seqs, self.token_ids, self.config.batch_size * 2,
                               f"predict LoRA + Prompt {self.lm.name}")

    def estimate(self, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """P(correct) of each proposed answer, asked with the prompt and separator the estimator recorded."""
        from calibtune.prompts import DEFAULT_PROMPT

        template, prefix = self.meta.get("prompt", DEFAULT_PROMPT), self.meta.get("option_prefix", " ")
        prompts = [template.format(question=q) for q in questions]
        return self.predict_proba(encode_queries(self.lm.tokenizer, prompts, [prefix + a for a in answers],
                                                 self.config.query))

    def describe(self) -> dict[str, Any]:
        """Every setting and outcome, for the saved JSON."""
        return {"method": "lora_prompt", "config": self.config.model_dump(mode="json"), "seed": self.seed,
                "target_modules": target_modules(self.lm, self.config), "token_ids": list(self.token_ids),
                "train_log": asdict(self.log) if self.log else None, **self.meta}

    def save(self, folder: Path) -> Path:
        """Adapters in peft's safetensors format beside ``lora_prompt.json``."""
        if self._peft is None:
            raise CalibtuneError("LoRA + Prompt is not fitted: nothing to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_adapters(self._peft, folder / "adapter")
        (folder / "lora_prompt.json").write_text(json.dumps(self.describe(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path, lm: LoadedModel) -> LoraPromptEstimator:
        """Read an estimator written by ``save`` onto the same estimator model ``lm``."""
        folder = Path(folder)
        try:
            info = json.loads((folder / "lora_prompt.json").read_text())
            config, seed = saved_config(LoraPromptConfig, info)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibtuneError(f"cannot load LoRA + Prompt from {folder}: {first_line(exc)}") from exc
        check_estimator_model(info, lm, folder)
        meta = {k: v for k, v in info.items()
                if k not in ("method", "config", "seed", "target_modules", "token_ids", "train_log")}
        est = cls(lm=lm, config=config, seed=seed, meta=meta)
        if list(est.token_ids) != info["token_ids"]:
            raise CalibtuneError(f"{folder}: the query's option tokens differ for model '{lm.name}'")
        try:
            est._peft = load_adapters(lm, folder / "adapter")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CalibtuneError(f"cannot load adapters from {folder / 'adapter'}: {first_line(exc)}") from exc
        lm.model.eval()
        return est

    def release(self) -> None:
        """Take the adapters off the estimator model."""
        if self._peft is not None:
            detach_lora(self._peft)
            self._peft = None


def base_answer_logits(lm: LoadedModel, seqs: Sequence[QueryEncoded], batch_size: int,
                       budget: int | None = None) -> list[torch.Tensor] | None:
    """The base model's raw LM-head outputs at each sequence's answer positions (one tensor per sequence).

    Run once, before adapters are attached, on the sequences cut at the end of the answer;
    the divergence term then costs no second forward pass per step. Returns None when the
    logits would not fit in ``budget`` bytes (default ``BASE_LOGITS_BUDGET``).
    """
    budget = BASE_LOGITS_BUDGET if budget is None else budget
    head = lm.model.get_output_embeddings()
    rows = sum(max(0, s.answer[1] - max(s.answer[0], 1)) for s in seqs)
    if rows * head.weight.shape[0] * head.weight.element_size() > budget:
        return None
    cut = [s.ids[: s.answer[1]] for s in seqs]
    out: list[torch.Tensor | None] = [None] * len(seqs)
    lm.model.eval()
    with torch.no_grad(), progress_bar(f"base logits {lm.name}", len(seqs)) as advance:
        for batch in length_batches([len(c) for c in cut], batch_size, None):
            ids, mask = pad_ids([cut[i] for i in batch], lm.tokenizer.pad_token_id, lm.device)
            hidden = lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, i in enumerate(batch):
                _, cols = _answer_positions([seqs[i]])
                out[i] = head(hidden[row, cols]).clone()
            advance(len(batch))
    return out  # type: ignore[return-value]


def _answer_positions(items: Sequence[QueryEncoded]) -> tuple[list[int], list[int]]:
    """(row, position) pairs whose next-token distribution predicts an answer token."""
    rows, cols = [], []
    for row, item in enumerate(items):
        start, end = item.answer
        for pos in range(max(start, 1), end):
            rows.append(row)
            cols.append(pos - 1)
    return rows, cols
