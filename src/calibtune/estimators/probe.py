"""The Probe: a small classifier on a frozen model's hidden state that predicts P(correct).

Features come from ``calibtune.features``: one hidden state per example at each of a few
candidate layers, shape ``[n, n_layers, hidden]``. With ``layer="auto"`` the probe fits a
head on every candidate layer and keeps the one with the best validation AUROC (middle
layers often carry more signal than the last); ``layer="last"`` is the paper's choice.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

from calibtune.errors import CalibtuneError, first_line
from calibtune.estimators.splits import validation_split


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of the Probe; every one is saved with the trained estimator."""

    layer: str | int = "auto"  # "auto" (best on validation), "last", or an index into the candidates' layers
    hidden_size: int = 64  # 0 means a linear (logistic) head
    dropout: float = 0.1
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    max_epochs: int = 200
    patience: int = 20
    val_fraction: float = 0.2
    seed: int = 0


def _head(in_features: int, config: ProbeConfig) -> torch.nn.Module:
    if config.hidden_size <= 0:
        return torch.nn.Linear(in_features, 1)
    return torch.nn.Sequential(
        torch.nn.Linear(in_features, config.hidden_size), torch.nn.GELU(), torch.nn.Dropout(config.dropout),
        torch.nn.Linear(config.hidden_size, 1),
    )


def _safe_auroc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


@dataclass
class _Fitted:
    layer: int  # position among the candidate layers
    head: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    val_auroc: float
    val_loss: float
    epochs: int


@dataclass
class ProbeEstimator:
    """Predict P(correct) from hidden-state features; ``fit`` / ``predict_proba`` / ``save`` / ``load``.

    ``layers`` names the model layers behind the feature array's second axis and
    ``meta`` carries provenance (estimator model, trained-on model, prompt, token
    position); both are saved with the estimator.
    """

    config: ProbeConfig = field(default_factory=ProbeConfig)
    layers: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    _fitted: _Fitted | None = field(default=None, repr=False)
    layer_scores: dict[int, float] = field(default_factory=dict)
    val_indices: np.ndarray | None = field(default=None, repr=False)  # held out by fit, if it held any out

    def fit(self, features: np.ndarray, labels: np.ndarray,
            val_features: np.ndarray | None = None, val_labels: np.ndarray | None = None) -> ProbeEstimator:
        """Train the head; without a validation set, hold out ``val_fraction`` of the training set."""
        x, y = _check(features, labels, self.layers)
        if len(np.unique(y)) < 2:
            raise CalibtuneError(
                f"cannot train a probe: all {len(y)} training labels are {bool(y[0])} (one class only)")
        if val_features is None:
            idx_train, idx_val = validation_split(y, self.config.val_fraction, self.config.seed)
            self.val_indices = idx_val
            x, xv, y, yv = x[idx_train], x[idx_val], y[idx_train], y[idx_val]
        else:
            xv, yv = _check(val_features, val_labels, self.layers)
        candidates = self._candidate_positions()
        fits = [self._fit_layer(x, y, xv, yv, pos) for pos in candidates]
        self.layer_scores = {self.layers[f.layer]: f.val_auroc for f in fits}
        # Rank by validation AUROC; a tie (or NaN) falls back to the lower validation loss.
        best = max(fits, key=lambda f: (np.nan_to_num(f.val_auroc, nan=-1.0), -f.val_loss))
        self._fitted = best
        return self

    def _candidate_positions(self) -> list[int]:
        layer = self.config.layer
        if layer == "auto":
            return list(range(len(self.layers)))
        if layer == "last":
            return [int(np.argmax(self.layers))]
        if isinstance(layer, int) and layer in self.layers:
            return [self.layers.index(layer)]
        raise CalibtuneError(f"probe layer {layer!r} is not among the extracted layers {list(self.layers)}; "
                             "use auto, last, or one of those")

    def _fit_layer(self, x: np.ndarray, y: np.ndarray, xv: np.ndarray, yv: np.ndarray, pos: int) -> _Fitted:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        xt = torch.from_numpy(x[:, pos]).float()
        mean, std = xt.mean(0), xt.std(0) + 1e-6
        xt = (xt - mean) / std
        xvt = (torch.from_numpy(xv[:, pos]).float() - mean) / std
        yt, yvt = torch.from_numpy(y).float(), torch.from_numpy(yv).float()
        head = _head(xt.shape[1], cfg)
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        gen = torch.Generator().manual_seed(cfg.seed)
        best_loss, best_state, best_epoch, since = float("inf"), None, 0, 0
        for epoch in range(cfg.max_epochs):
            head.train()
            for batch in torch.randperm(len(yt), generator=gen).split(cfg.batch_size):
                opt.zero_grad()
                loss_fn(head(xt[batch]).squeeze(-1), yt[batch]).backward()
                opt.step()
            head.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(head(xvt).squeeze(-1), yvt))
            if val_loss < best_loss - 1e-5:
                best_loss, best_epoch, since = val_loss, epoch + 1, 0
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
            else:
                since += 1
                if since >= cfg.patience:
                    break
        head.load_state_dict(best_state)
        head.eval()
        with torch.no_grad():
            pv = torch.sigmoid(head(xvt).squeeze(-1)).numpy()
        return _Fitted(pos, head, mean, std, _safe_auroc(yv, pv), best_loss, best_epoch)

    @property
    def layer(self) -> int:
        """The model layer the fitted probe reads."""
        return self.layers[self._require().layer]

    def _require(self) -> _Fitted:
        if self._fitted is None:
            raise CalibtuneError("the probe is not fitted: call fit() or load() first")
        return self._fitted

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """P(correct) for each example."""
        fitted = self._require()
        x, _ = _check(features, None, self.layers)
        xt = (torch.from_numpy(x[:, fitted.layer]).float() - fitted.mean) / fitted.std
        with torch.no_grad():
            return torch.sigmoid(fitted.head(xt).squeeze(-1)).double().numpy()

    def describe(self) -> dict[str, Any]:
        """Every setting and outcome of the fit, for the saved JSON and the run folder."""
        fitted = self._require()
        return {
            "method": "probe", "config": asdict(self.config), "layers": list(self.layers),
            "chosen_layer": self.layer, "val_auroc_by_layer": {str(k): v for k, v in self.layer_scores.items()},
            "val_loss": fitted.val_loss, "epochs": fitted.epochs, "in_features": int(fitted.mean.shape[0]),
            **self.meta,
        }

    def save(self, folder: Path) -> Path:
        """Write ``probe.safetensors`` and ``probe.json`` into ``folder``."""
        fitted = self._require()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"head.{k}": v.contiguous() for k, v in fitted.head.state_dict().items()}
        tensors.update({"norm.mean": fitted.mean, "norm.std": fitted.std})
        save_file(tensors, str(folder / "probe.safetensors"))
        (folder / "probe.json").write_text(json.dumps(self.describe(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> ProbeEstimator:
        """Read an estimator written by ``save``."""
        folder = Path(folder)
        try:
            info = json.loads((folder / "probe.json").read_text())
            tensors = load_file(str(folder / "probe.safetensors"))
            config = ProbeConfig(**info["config"])
            layers = tuple(info["layers"])
            head = _head(int(info["in_features"]), config)
            head.load_state_dict({k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")})
        except Exception as exc:  # json, safetensors and torch each raise their own kinds for a damaged file
            raise CalibtuneError(f"cannot load probe from {folder}: {first_line(exc)}") from exc
        head.eval()
        meta_keys = set(info) - {"method", "config", "layers", "chosen_layer", "val_auroc_by_layer", "val_loss",
                                 "epochs", "in_features"}
        probe = cls(config=config, layers=layers, meta={k: info[k] for k in meta_keys})
        probe.layer_scores = {int(k): v for k, v in info["val_auroc_by_layer"].items()}
        probe._fitted = _Fitted(layers.index(info["chosen_layer"]), head, tensors["norm.mean"], tensors["norm.std"],
                                probe.layer_scores.get(info["chosen_layer"], float("nan")), info["val_loss"],
                                info["epochs"])
        return probe


def _check(features: np.ndarray, labels: np.ndarray | None, layers: tuple[int, ...]) -> tuple[np.ndarray, Any]:
    x = np.asarray(features)
    if x.ndim != 3 or x.shape[1] != len(layers):
        raise CalibtuneError(f"probe features must have shape [n, {len(layers)} layers, hidden]; got {x.shape}")
    if labels is None:
        return x, None
    y = np.asarray(labels).astype(np.int64)
    if len(y) != len(x):
        raise CalibtuneError(f"{len(x)} feature rows but {len(y)} labels")
    if not np.isfinite(x).all():
        warnings.warn("non-finite features replaced by 0", stacklevel=3)
        x = np.nan_to_num(x)
    return x, y
