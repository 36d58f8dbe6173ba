"""The Probe: a small classifier on a frozen model's hidden state that predicts P(correct).

Features come from ``calibtune.features``: one hidden state per example at each of a few
candidate layers, shape ``[n, n_layers, hidden]``. With ``layer="auto"`` the probe fits a
head on every candidate layer and keeps the one with the best validation AUROC (middle
layers often carry more signal than the last); ``layer="last"`` is the paper's choice.

``ProbeEstimator`` is a scikit-learn classifier: ``fit(X, y)``, ``predict_proba(X)`` of
shape ``(n, 2)``, ``get_params``/``set_params``, so ``sklearn.base.clone`` and
``CalibratedClassifierCV`` accept it. ``ProbeOnModel`` binds a fitted probe to its
estimator model, to score (question, answer) texts directly.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score

from calibtune.errors import CalibtuneError, first_line
from calibtune.estimator_settings import ProbeConfig
from calibtune.estimators.splits import validation_split
from calibtune.metrics import nll
from calibtune.records import Question


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
    position: int  # position among the candidate layers
    head: torch.nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    val_auroc: float
    val_loss: float
    epochs: int


def _stacked_logits(heads: Sequence[torch.nn.Module], inputs: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
    """Each head's logits ``[heads, rows]`` of its own rows ``inputs[k]`` (``[heads, rows, features]``), the
    heads' weights stacked so that each layer is one batched product; ``noise`` is the dropout after the
    hidden layer (``[heads, rows, hidden]``: 0 or the kept values' scale), None without dropout."""
    def stacked(linears):
        weight = torch.stack([lin.weight for lin in linears]).transpose(1, 2)
        return weight, torch.stack([lin.bias for lin in linears]).unsqueeze(1)

    if isinstance(heads[0], torch.nn.Linear):
        weight, bias = stacked(heads)
        return torch.baddbmm(bias, inputs, weight).squeeze(-1)
    weight, bias = stacked([head[0] for head in heads])
    hidden = torch.nn.functional.gelu(torch.baddbmm(bias, inputs, weight))
    if noise is not None:
        hidden = hidden * noise
    weight, bias = stacked([head[3] for head in heads])
    return torch.baddbmm(bias, hidden, weight).squeeze(-1)


def _head_p(fitted: _Fitted, x: np.ndarray) -> np.ndarray:
    """One head's P(correct) from the features ``[n, n_layers, hidden]`` (its layer standardised as in training)."""
    xt = (torch.from_numpy(x[:, fitted.position]).float() - fitted.mean) / fitted.std
    with torch.no_grad():
        return torch.sigmoid(fitted.head(xt).squeeze(-1)).double().numpy()


class ProbeEstimator(ClassifierMixin, BaseEstimator):
    """Predict P(correct) from hidden-state features ``[n, len(layers), hidden]``.

    ``config`` holds every setting of the head and its training (``ProbeConfig``; None means
    the defaults), ``layers`` names the model layers behind the features' second axis,
    ``seed`` fixes the split and the initialisation, and ``meta`` carries provenance
    (estimator model, trained-on model, prompt, token position); all are saved with the probe.
    Fitted attributes: ``layer_`` (the layer read), ``layer_scores_`` (validation AUROC per
    candidate layer: out-of-fold over every training answer for an ensemble), ``heads_`` (the fitted heads
    at that layer, one per fold), ``held_out_`` (the training rows some head did not train on and their
    P(correct) from that head, when ``fit`` held any out), ``val_indices_`` (the held-out rows of ``folds: 1``).
    """

    def __init__(self, config: ProbeConfig | None = None, layers: Sequence[int] = (), seed: int = 0,
                 meta: dict[str, Any] | None = None):
        self.config = config
        self.layers = layers
        self.seed = seed
        self.meta = meta

    @property
    def settings(self) -> ProbeConfig:
        """The config in force (the defaults when none was given)."""
        return self.config if self.config is not None else ProbeConfig()

    def fit(self, X: np.ndarray, y: np.ndarray, val_features: np.ndarray | None = None,
            val_labels: np.ndarray | None = None) -> ProbeEstimator:
        """Train the head, or the ensemble of ``folds`` heads, and choose the layer.

        With ``folds`` above 1 (the default, 10), the training answers are split into that many stratified
        folds; for each candidate layer one head trains on every fold but one and stops early on that one,
        the layer with the best out-of-fold AUROC (over every training answer) is kept, and P(correct) is the
        mean of its heads'. With ``folds: 1``, one head trains on the answers less a stratified
        ``val_fraction`` held out. Given a validation set, one head trains on all of ``X`` and stops on it.
        """
        layers = tuple(self.layers)
        x, y = _check(X, y, layers)
        if len(np.unique(y)) < 2:
            raise CalibtuneError(
                f"cannot train a probe: all {len(y)} training labels are {bool(y[0])} (one class only)")
        self.val_indices_, self.held_out_ = None, None
        positions = self._candidate_positions(layers)
        if val_features is not None:
            xv, yv = _check(val_features, val_labels, layers)
            fits = [self._fit_heads(pos, [(x, y, xv, yv)], [self.seed]) for pos in positions]
            scores = [(f[0].val_auroc, f[0].val_loss) for f in fits]
        else:
            splits = self._splits(y)
            held = np.sort(np.concatenate([val for _, val in splits]))  # every row some head did not train on
            fits, scores, out_of_fold = [], [], []
            for pos in positions:
                heads = self._fit_heads(pos, [(x[train], y[train], x[val], y[val]) for train, val in splits],
                                        [self.seed + k for k in range(len(splits))])
                p = np.zeros(len(y))
                for head, (_, val) in zip(heads, splits):
                    p[val] = _head_p(head, x[val])
                fits.append(heads)
                out_of_fold.append(p)
                scores.append((_safe_auroc(y[held], p[held]), nll(p[held], y[held])))
        self.layer_scores_ = {layers[pos]: score[0] for pos, score in zip(positions, scores)}
        # Rank by validation AUROC; a tie (or NaN) falls back to the lower validation loss.
        best = max(range(len(fits)), key=lambda i: (np.nan_to_num(scores[i][0], nan=-1.0), -scores[i][1]))
        self.heads_ = fits[best]
        self.fitted_ = self.heads_[0]
        self.val_loss_ = scores[best][1]
        self.layer_ = layers[self.fitted_.position]
        if val_features is None:
            self.held_out_ = (held, out_of_fold[best][held])
            if len(splits) == 1:
                self.val_indices_ = splits[0][1]
        self.classes_ = np.array([0, 1])
        return self

    def _splits(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train, validation) row indices of each head: ``folds`` stratified folds (no more than the smaller
        class has answers), or one hold-out split."""
        folds = min(self.settings.folds, int((y == 1).sum()), int((y != 1).sum()))
        if folds < 2:
            return [validation_split(y, self.settings.val_fraction, self.seed)]
        from sklearn.model_selection import StratifiedKFold

        return list(StratifiedKFold(folds, shuffle=True, random_state=self.seed).split(np.zeros(len(y)), y))

    def _candidate_positions(self, layers: tuple[int, ...]) -> list[int]:
        layer = self.settings.layer
        if layer == "auto":
            return list(range(len(layers)))
        if layer == "last":
            return [int(np.argmax(layers))]
        if isinstance(layer, int) and layer in layers:
            return [layers.index(layer)]
        raise CalibtuneError(f"probe layer {layer!r} is not among the extracted layers {list(layers)}; "
                             "use auto, last, or one of those")

    def _fit_heads(self, pos: int, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                   seeds: Sequence[int]) -> list[_Fitted]:
        """One head per ``(x, y, x_val, y_val)`` part on candidate layer ``pos``, each trained on its ``x`` and
        stopped early on its validation part, seeded by its own seed, all stepped together.

        Each head is what training it alone would give (its own batches, dropout masks and early stopping;
        the optimizer skips heads without a batch in a step), but the heads' products run as one batched
        product per layer, so ten heads cost little more than one: a head's steps are too small for one
        product to keep the CPU busy.
        """
        cfg = self.settings
        loss_fn = torch.nn.BCEWithLogitsLoss()
        heads, xs, ys, xvs, yvs, means, stds, orders, masks = [], [], [], [], [], [], [], [], []
        for (x, y, xv, yv), seed in zip(parts, seeds):
            xt = torch.from_numpy(x[:, pos]).float()
            mean, std = xt.mean(0), xt.std(0) + 1e-6
            xs.append((xt - mean) / std)
            xvs.append((torch.from_numpy(xv[:, pos]).float() - mean) / std)
            ys.append(torch.from_numpy(y).float())
            yvs.append(torch.from_numpy(yv).float())
            means.append(mean)
            stds.append(std)
            torch.manual_seed(seed)
            heads.append(_head(xt.shape[1], cfg))
            masks.append(torch.Generator())  # dropout: the global generator's state after this head's initialisation
            masks[-1].set_state(torch.get_rng_state())
            orders.append(torch.Generator().manual_seed(seed))
        # foreach: one call per step for every head's tensors, not a Python loop over 4 per head (torch picks it
        # only on CUDA by itself); the same updates bit for bit, 1.1-1.2x faster fits (benchmarks/probe_fit.py)
        opt = torch.optim.AdamW([p for head in heads for p in head.parameters()], lr=cfg.learning_rate,
                                weight_decay=cfg.weight_decay, foreach=True)
        n = len(heads)
        best_loss, best_state, best_epoch, since = [float("inf")] * n, [None] * n, [0] * n, [0] * n
        active = list(range(n))
        for epoch in range(cfg.max_epochs):
            batches = {k: torch.randperm(len(ys[k]), generator=orders[k]).split(cfg.batch_size) for k in active}
            for step in range(max(len(b) for b in batches.values())):
                live = [k for k in active if step < len(batches[k])]
                rows = [batches[k][step] for k in live]
                width = max(len(r) for r in rows)
                # a head with fewer rows than the widest pads with rows of weight 0 (and no dropout draw)
                ragged = any(len(r) < width for r in rows)
                make = torch.zeros if ragged else torch.empty
                inputs = make(len(live), width, xs[0].shape[1])
                target, weight = make(len(live), width), make(len(live), width)
                noise = None if cfg.hidden_size <= 0 or cfg.dropout == 0 else make(len(live), width, cfg.hidden_size)
                for i, (k, r) in enumerate(zip(live, rows)):
                    torch.index_select(xs[k], 0, r, out=inputs[i, :len(r)])
                    target[i, :len(r)], weight[i, :len(r)] = ys[k][r], 1.0 / len(r)
                    if noise is not None:  # as torch's dropout draws it, from this head's generator
                        noise[i, :len(r)].bernoulli_(1 - cfg.dropout, generator=masks[k]).div_(1 - cfg.dropout)
                opt.zero_grad(set_to_none=True)
                logits = _stacked_logits([heads[k] for k in live], inputs, noise)
                losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
                (losses * weight).sum().backward()
                opt.step()
            for k in list(active):
                heads[k].eval()
                with torch.no_grad():
                    val_loss = float(loss_fn(heads[k](xvs[k]).squeeze(-1), yvs[k]))
                if val_loss < best_loss[k] - 1e-5:
                    best_loss[k], best_epoch[k], since[k] = val_loss, epoch + 1, 0
                    best_state[k] = {name: v.clone() for name, v in heads[k].state_dict().items()}
                else:
                    since[k] += 1
                    if since[k] >= cfg.patience:
                        active.remove(k)
            if not active:
                break
        fitted = []
        for k, head in enumerate(heads):
            head.load_state_dict(best_state[k])
            head.eval()
            with torch.no_grad():
                pv = torch.sigmoid(head(xvs[k]).squeeze(-1)).numpy()
            fitted.append(_Fitted(pos, head, means[k], stds[k], _safe_auroc(parts[k][3], pv), best_loss[k],
                                  best_epoch[k]))
        return fitted

    def _require(self) -> _Fitted:
        fitted = getattr(self, "fitted_", None)
        if fitted is None:
            raise CalibtuneError("the probe is not fitted: call fit() or load() first")
        return fitted

    def p_correct(self, X: np.ndarray) -> np.ndarray:
        """P(correct) for each example (the mean of the heads'): ``predict_proba(X)[:, 1]``."""
        self._require()
        x, _ = _check(X, None, tuple(self.layers))
        return np.mean([_head_p(head, x) for head in self.heads_], axis=0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, 2)``: P(wrong) and P(correct) of each example, as scikit-learn classifiers return them."""
        p = self.p_correct(X)
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 where P(correct) is at least one half."""
        return (self.p_correct(X) >= 0.5).astype(np.int64)

    def describe(self) -> dict[str, Any]:
        """Every setting and outcome of the fit, for the saved JSON and the run folder. ``val_auroc_by_layer``
        and ``val_loss`` are out-of-fold figures over every training answer when the probe is an ensemble."""
        fitted = self._require()
        return {
            "method": "probe", "config": self.settings.model_dump(mode="json"), "seed": self.seed,
            "layers": list(self.layers), "chosen_layer": self.layer_,
            "val_auroc_by_layer": {str(k): v for k, v in self.layer_scores_.items()},
            "val_loss": self.val_loss_, "epochs": fitted.epochs, "heads": len(self.heads_),
            "epochs_by_head": [h.epochs for h in self.heads_], "in_features": int(fitted.mean.shape[0]),
            **(self.meta or {}),
        }

    def save(self, folder: Path) -> Path:
        """Write ``probe.safetensors`` (each head's weights and standardisation; the first head's names carry
        no prefix, the others' ``head{k}.``) and ``probe.json`` into ``folder``."""
        self._require()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for k, fitted in enumerate(self.heads_):
            prefix = f"head{k}." if k else ""
            tensors.update({f"{prefix}head.{n}": v.contiguous() for n, v in fitted.head.state_dict().items()})
            tensors.update({f"{prefix}norm.mean": fitted.mean, f"{prefix}norm.std": fitted.std})
        save_file(tensors, str(folder / "probe.safetensors"))
        (folder / "probe.json").write_text(json.dumps(self.describe(), indent=2))
        return folder

    @classmethod
    def load(cls, folder: Path) -> ProbeEstimator:
        """Read an estimator written by ``save`` (or by a calibtune that saved one head)."""
        folder = Path(folder)
        try:
            info = json.loads((folder / "probe.json").read_text())
            tensors = load_file(str(folder / "probe.safetensors"))
            settings = dict(info["config"])
            seed = int(info.get("seed", settings.pop("seed", 0)))
            settings.pop("seed", None)  # saved inside the config by calibtune 0.1
            config = ProbeConfig(**settings)
            layers = tuple(info["layers"])
            position = layers.index(info["chosen_layer"])
            epochs = info.get("epochs_by_head", [info["epochs"]])
            heads = []
            for k in range(int(info.get("heads", 1))):
                prefix = f"head{k}." if k else ""
                head = _head(int(info["in_features"]), config)
                head.load_state_dict({n.removeprefix(f"{prefix}head."): v for n, v in tensors.items()
                                      if n.startswith(f"{prefix}head.")})
                head.eval()
                heads.append(_Fitted(position, head, tensors[f"{prefix}norm.mean"], tensors[f"{prefix}norm.std"],
                                     float("nan"), float("nan"), int(epochs[k])))
        except Exception as exc:  # json, pydantic, safetensors and torch each raise their own kinds
            raise CalibtuneError(f"cannot load probe from {folder}: {first_line(exc)}") from exc
        meta_keys = set(info) - {"method", "config", "seed", "layers", "chosen_layer", "val_auroc_by_layer",
                                 "val_loss", "epochs", "in_features", "heads", "epochs_by_head"}
        probe = cls(config=config, layers=layers, seed=seed, meta={k: info[k] for k in meta_keys})
        probe.layer_scores_ = {int(k): v for k, v in info["val_auroc_by_layer"].items()}
        probe.layer_ = info["chosen_layer"]
        probe.val_indices_, probe.held_out_ = None, None
        probe.classes_ = np.array([0, 1])
        probe.heads_, probe.fitted_, probe.val_loss_ = heads, heads[0], info["val_loss"]
        return probe


def _check(features: np.ndarray, labels: np.ndarray | None, layers: tuple[int, ...]) -> tuple[np.ndarray, Any]:
    """The features as an array of the right shape (non-finite values warned about and set to 0), and the labels."""
    x = np.asarray(features)
    if x.ndim != 3 or x.shape[1] != len(layers):
        raise CalibtuneError(f"probe features must have shape [n, {len(layers)} layers, hidden]; got {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=(1, 2)).sum())
        warnings.warn(f"non-finite features in {rows} of {len(x)} rows replaced by 0", stacklevel=3)
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    if labels is None:
        return x, None
    y = np.asarray(labels).astype(np.int64)
    if len(y) != len(x):
        raise CalibtuneError(f"{len(x)} feature rows but {len(y)} labels")
    return x, y


@dataclass
class ProbeOnModel:
    """A fitted probe bound to its estimator model: ``estimate(questions, answers)`` reads the model's hidden
    states of "prompt + answer" and returns the probe's P(correct)."""

    probe: ProbeEstimator
    lm: Any  # calibtune.models.LoadedModel
    token: str = "last"
    option_prefix: str = " "

    def estimate(self, questions: Sequence[Question | str], answers: Sequence[str]) -> np.ndarray:
        """P(correct) of each proposed answer, asked with the prompt the probe was trained with."""
        from calibtune.features import extract_features
        from calibtune.prompts import DEFAULT_PROMPT, format_prompts

        prompts = format_prompts(questions, (self.probe.meta or {}).get("prompt", DEFAULT_PROMPT))
        return self.probe.p_correct(extract_features(self.lm, prompts, [self.option_prefix + a for a in answers],
                                                     list(self.probe.layers), token=self.token))
