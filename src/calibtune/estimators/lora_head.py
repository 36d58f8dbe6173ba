"""LoRA: the Probe's head on a hidden state, with LoRA adapters on the estimator model trained jointly.

The estimator model reads "question + proposed answer"; the hidden state of the last token
at ``layer`` goes through a small MLP head that predicts P(correct). Adapters are placed
only on the layers below ``layer``, since the ones above cannot change its input.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from calibtune.distributed import ONE_PROCESS, DataParallel
from calibtune.errors import CalibtuneError, first_line
from calibtune.estimator_settings import LoraHeadConfig
from calibtune.estimators.adapters import (
    TrainLog,
    attach_lora,
    detach_lora,
    held_out_score,
    kept_held_out,
    load_adapters,
    load_lora_state,
    lora_state,
    save_adapters,
    saved_config,
    target_modules,
    train_loop,
)
from calibtune.estimators.base import check_estimator_model
from calibtune.estimators.splits import balanced_weights, validation_split
from calibtune.forward import Encoded, check_lengths, decoder_up_to, differentiable_attention, length_batches, pad_ids
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar
from calibtune.records import Question


class Standardize(torch.nn.Module):
    """(x - mean) / std per feature, with the Probe's statistics as buffers (saved with the head)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _head(in_features: int, config: LoraHeadConfig) -> torch.nn.Module:
    # Residual streams are large (Gemma's mid-layer norms run into the hundreds): the input is
    # standardised as the Probe standardises its features (with the Probe's statistics when the head
    # starts from a fitted Probe), or, without one, normalised per example, or the head diverges.
    first = Standardize(in_features) if config.init_from_probe else torch.nn.LayerNorm(in_features,
                                                                                       elementwise_affine=False)
    return torch.nn.Sequential(
        first, torch.nn.Linear(in_features, config.hidden_size), torch.nn.GELU(),
        torch.nn.Dropout(config.head_dropout), torch.nn.Linear(config.hidden_size, 1),
    )


@dataclass
class LoraHeadEstimator:
    """LoRA adapters plus an MLP head: ``fit`` / ``predict_proba`` / ``save`` / ``load`` / ``release``."""

    lm: LoadedModel
    config: LoraHeadConfig = field(default_factory=LoraHeadConfig)
    seed: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    log: TrainLog | None = None
    head: torch.nn.Module | None = None
    val_indices: np.ndarray | None = None
    val_logits: np.ndarray | None = None  # the kept adapters' and head's logits of P(correct) on the held-out answers
    _peft: Any = field(default=None, repr=False)

    @property
    def layer(self) -> int:
        """The hidden-state layer the head reads."""
        return self.config.layer if self.config.layer >= 0 else max(1, self.lm.num_layers // 2)

    def _features(self, seqs: Sequence[Encoded]) -> torch.Tensor:
        """The hidden state the head reads: the last token's, after ``layer`` blocks (the blocks above are not run)."""
        ids, mask = pad_ids([s.ids for s in seqs], self.lm.tokenizer.pad_token_id, self.lm.device)
        with decoder_up_to(self.lm, self.layer) as decoder:
            states = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return states[torch.arange(len(seqs)), mask.sum(dim=1) - 1].float()

    def fit(self, seqs: Sequence[Encoded], labels: np.ndarray, checkpoint: Path | None = None,
            probe=None, groups: Sequence[str] | None = None,
            parallel: DataParallel = ONE_PROCESS) -> LoraHeadEstimator:
        """Train adapters and head jointly; a stratified ``val_fraction`` is held out for early stopping.

        ``probe`` (a fitted ``ProbeEstimator`` of one head on this layer, with the same hidden size) is where the head
        starts: its standardisation and weights. ``groups`` (each answer's dataset) weight the loss when the
        config balances by dataset. With ``checkpoint`` (a folder), training saves its state there and
        resumes from it after a crash. With ``parallel``, the processes of a group train together, each on
        its share of every batch and of the held-out answers.
        """
        cfg = self.config
        y = np.asarray(labels).astype(np.float32)
        if len(np.unique(y)) < 2:
            raise CalibtuneError(f"cannot train LoRA: all {len(y)} training labels are one class")
        check_lengths(self.lm, [len(s.ids) for s in seqs])
        idx_train, idx_val = validation_split(y, cfg.val_fraction, self.seed)
        self.val_indices = idx_val
        train_seqs, y_train = [seqs[i] for i in idx_train], torch.from_numpy(y[idx_train])
        val_seqs, y_val = [seqs[i] for i in idx_val], torch.from_numpy(y[idx_val])
        # Adapters above the head's layer cannot change its input: place them below only.
        self._peft = attach_lora(self.lm, cfg, self.seed, layers=list(range(self.layer)), parallel=parallel)
        torch.manual_seed(self.seed)
        hidden = self.lm.model.get_output_embeddings().weight.shape[1]
        self.head = _head(hidden, cfg).to(self.lm.device)
        if probe is None and cfg.init_from_probe:  # no probe to start from: standardise as a probe would
            with torch.no_grad():
                feats = torch.cat([self._features([train_seqs[i] for i in batch]) for batch in
                                   length_batches([len(s.ids) for s in train_seqs], cfg.batch_size * 2, None)])
                self.head[0].mean.copy_(feats.mean(0))
                self.head[0].std.copy_(feats.std(0) + 1e-6)
        if probe is not None:
            fitted = probe.fitted_
            if cfg.hidden_size != probe.settings.hidden_size or not cfg.init_from_probe or len(probe.heads_) != 1:
                raise CalibtuneError("the LoRA head starts from a probe of one head (folds: 1) of the same hidden "
                                     "size, with init_from_probe: true")
            with torch.no_grad():
                self.head[0].mean.copy_(fitted.mean)
                self.head[0].std.copy_(fitted.std)
                for mine, theirs in ((self.head[1], fitted.head[0]), (self.head[4], fitted.head[3])):
                    mine.weight.copy_(theirs.weight)
                    mine.bias.copy_(theirs.bias)
        params = [p for p in self._peft.parameters() if p.requires_grad] + list(self.head.parameters())
        weights = np.ones(len(y))
        if cfg.balance == "dataset":
            if groups is None:
                raise CalibtuneError("balance: dataset needs each training answer's dataset")
            weights = balanced_weights(y, groups)
        w_train, w_val = torch.from_numpy(weights[idx_train]).float(), weights[idx_val]

        def step_loss(whole: np.ndarray) -> torch.Tensor:
            batch = parallel.shard(whole)  # this process's share, normalised as over the whole batch
            if len(batch) == 0:
                return torch.zeros(())
            with differentiable_attention(self.lm):
                logits = self.head(self._features([train_seqs[i] for i in batch])).squeeze(-1)
            w = w_train[batch].to(logits.device)
            losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_train[batch].to(logits.device),
                                                                          reduction="none")
            return (losses * w).sum() / w_train[whole].sum().to(logits.device)

        validated: list[np.ndarray] = []

        def val_score() -> float:
            self.lm.model.eval()
            self.head.eval()
            mine = parallel.share(np.arange(len(val_seqs)))
            z = self._logits([val_seqs[i] for i in mine])
            self.lm.model.train()
            self.head.train()
            validated.append(parallel.gather(mine, z, len(val_seqs)))
            return held_out_score(cfg.keep, validated[-1], y_val.numpy(), w_val)

        def get_state() -> dict:
            return {"lora": lora_state(self._peft), "head": {k: v.clone() for k, v in self.head.state_dict().items()}}

        def set_state(state: dict) -> None:
            load_lora_state(self._peft, state["lora"])
            self.head.load_state_dict(state["head"])

        self.lm.model.train()
        self.head.train()
        self.log = train_loop(params, len(train_seqs), step_loss, val_score, get_state, set_state, cfg, self.seed,
                              f"train LoRA {self.meta.get('estimator_model', self.lm.name)} on "
                              f"{self.meta.get('trained_on', '?')}", checkpoint,
                              lengths=[len(s.ids) for s in train_seqs], parallel=parallel)
        self.val_logits = kept_held_out(self.log, validated)
        self.lm.model.eval()
        self.head.eval()
        return self

    def _logits(self, seqs: Sequence[Encoded], advance=None) -> np.ndarray:
        """The head's logit of P(correct) for each sequence, in float64."""
        check_lengths(self.lm, [len(s.ids) for s in seqs])
        out = np.zeros(len(seqs))
        with torch.no_grad():
            for batch in length_batches([len(s.ids) for s in seqs], self.config.batch_size * 2, None):
                out[batch] = self.head(self._features([seqs[i] for i in batch])).squeeze(-1).double().cpu().numpy()
                if advance:
                    advance(len(batch))
        return out

    def _predict(self, seqs: Sequence[Encoded], advance=None) -> np.ndarray:
        from scipy.special import expit

        return expit(self._logits(seqs, advance))

    def predict_proba(self, seqs: Sequence[Encoded]) -> np.ndarray:
        """P(correct) for each sequence."""
        if self._peft is None or self.head is None:
            raise CalibtuneError("LoRA is not fitted: call fit() or load() first")
        self.lm.model.eval()
        self.head.eval()
        with progress_bar(f"predict LoRA {self.lm.name}", len(seqs)) as advance:
            return self._predict(seqs, advance)

    def estimate(self, questions: Sequence[Question | str], answers: Sequence[str]) -> np.ndarray:
        """P(correct) of each proposed answer, asked with the prompt and separator the estimator recorded."""
        from calibtune.features import answer_sequences
        from calibtune.prompts import DEFAULT_PROMPT, format_prompts

        template, prefix = self.meta.get("prompt", DEFAULT_PROMPT), self.meta.get("option_prefix", " ")
        return self.predict_proba(answer_sequences(self.lm, format_prompts(questions, template),
                                                   [prefix + a for a in answers]))

    def describe(self) -> dict[str, Any]:
        """Every setting and outcome, for the saved JSON."""
        return {"method": "lora", "config": self.config.model_dump(mode="json"), "seed": self.seed,
                "target_modules": target_modules(self.lm, self.config), "chosen_layer": self.layer,
                "train_log": asdict(self.log) if self.log else None, **self.meta}

    def save(self, folder: Path) -> Path:
        """Adapters (peft, safetensors), ``head.safetensors`` and ``lora.json``."""
        if self._peft is None or self.head is None:
            raise CalibtuneError("LoRA is not fitted: nothing to save")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_adapters(self._peft, folder / "adapter")
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(folder / "head.safetensors"))
        (folder / "lora.json").write_text(json.dumps(self.describe(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path, lm: LoadedModel) -> LoraHeadEstimator:
        """Read an estimator written by ``save`` onto the same estimator model ``lm``."""
        folder = Path(folder)
        try:
            info = json.loads((folder / "lora.json").read_text())
            config, seed = saved_config(LoraHeadConfig, info)
            tensors = load_file(str(folder / "head.safetensors"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CalibtuneError(f"cannot load LoRA from {folder}: {first_line(exc)}") from exc
        check_estimator_model(info, lm, folder)
        meta = {k: v for k, v in info.items()
                if k not in ("method", "config", "seed", "target_modules", "chosen_layer", "train_log")}
        est = cls(lm=lm, config=config, seed=seed, meta=meta)
        hidden = lm.model.get_output_embeddings().weight.shape[1]
        est.head = _head(hidden, config).to(lm.device)
        try:
            est.head.load_state_dict(tensors)
            est._peft = load_adapters(lm, folder / "adapter")
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CalibtuneError(f"cannot load LoRA from {folder}: {first_line(exc)}") from exc
        est.head.eval()
        lm.model.eval()
        return est

    def release(self) -> None:
        """Take the adapters off the estimator model."""
        if self._peft is not None:
            detach_lora(self._peft)
            self._peft = None
