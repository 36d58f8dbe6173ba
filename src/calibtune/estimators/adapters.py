"""LoRA adapters on an estimator model: wrapping, a short training loop, saving and loading.

Shared by the two trained-adapter methods (LoRA + Prompt, and LoRA with a probe head).
The loop is deliberately plain (nanoGPT style): AdamW, cosine schedule with warm-up,
gradient clipping, periodic validation, early stopping that keeps the best adapters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from calibtune.models import LoadedModel
from calibtune.progress import console

DEFAULT_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings (the paper's: rank 8, alpha 32, dropout 0.1 on query and value)."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    layers: str = "all"  # "all", or "top_half": adapters only on the upper half, so backward stops midway


@dataclass(frozen=True)
class TrainSettings:
    """How long and how fast to train."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 8
    epochs: float = 1.0
    max_steps: int | None = None
    warmup_fraction: float = 0.05
    eval_every: int = 25
    patience: int = 4  # evaluations without improvement before stopping
    max_grad_norm: float = 1.0
    seed: int = 0


def settings_from_dict(data: dict) -> tuple[LoraSettings, TrainSettings]:
    """The ``lora`` and ``train`` settings of a saved estimator's JSON config."""
    lora = data["lora"]
    return (LoraSettings(**{**lora, "target_modules": tuple(lora["target_modules"])}),
            TrainSettings(**data["train"]))


@dataclass
class TrainLog:
    """What happened during training, saved with the estimator."""

    steps: int = 0
    best_step: int = 0
    best_val_loss: float = float("inf")
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def attach_lora(lm: LoadedModel, settings: LoraSettings, seed: int, layers: Sequence[int] | None = None):
    """Wrap the model with fresh LoRA adapters (peft), on ``layers`` only if given; returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    if layers is None and settings.layers == "top_half":
        layers = range(lm.num_layers // 2, lm.num_layers)
    elif settings.layers not in ("all", "top_half"):
        raise ValueError(f"unknown adapter layers '{settings.layers}': use all or top_half")
    torch.manual_seed(seed)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none",
                        layers_to_transform=list(layers) if layers is not None else None)
    lm.model.requires_grad_(False)
    with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(lm.model, config)
    # LoRA weights train in fp32 even when the base model runs in bf16.
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    return peft_model


def detach_lora(peft_model) -> None:
    """Remove the adapters, leaving the base model as it was."""
    peft_model.unload()


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """A copy of the trainable adapter weights."""
    return {k: v.detach().clone() for k, v in peft_model.named_parameters() if v.requires_grad}


def load_lora_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    """Put adapter weights (from ``lora_state``) back."""
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def _flatten(prefix: str, obj, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Nested dicts of tensors as one flat dict with dotted keys (for safetensors)."""
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(name + "/", value, out)
        else:
            out[name] = value.detach().contiguous().clone()
    return out


def _unflatten(flat: dict[str, torch.Tensor], prefix: str) -> dict:
    out: dict = {}
    for name, value in flat.items():
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("/")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


@dataclass
class _Progress:
    """Everything a resumed training needs besides the model, optimizer and scheduler."""

    step: int
    since: int
    order: list[int]
    running: float | None
    log: TrainLog
    has_best: bool


def save_checkpoint(folder: Path, current: dict, best: dict | None, opt, sched, rng, progress: _Progress) -> None:
    """Write a training checkpoint atomically: safetensors for tensors, JSON for the rest (no pickle)."""
    import json
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_file

    opt_state = opt.state_dict()
    tensors = _flatten("current/", current, {})
    if best is not None:
        _flatten("best/", best, tensors)
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt/{index}/{key}"] = value.detach().contiguous().clone()
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {"param_groups": opt_state["param_groups"], "scheduler": {"last_epoch": sched.last_epoch},
            "numpy_rng": rng.bit_generator.state, "progress": asdict(progress)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(folder: Path, opt, sched, rng) -> tuple[dict, dict | None, _Progress]:
    """Restore optimizer, scheduler and random state from a checkpoint; return the weights and progress."""
    import json

    from safetensors.torch import load_file

    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "state.json").read_text())
    opt_state = {"state": {}, "param_groups": meta["param_groups"]}
    for name, value in tensors.items():
        if name.startswith("opt/"):
            _, index, key = name.split("/")
            opt_state["state"].setdefault(int(index), {})[key] = value
    opt.load_state_dict(opt_state)
    sched.last_epoch = meta["scheduler"]["last_epoch"]
    sched._last_lr = [group["lr"] for group in opt.param_groups]
    rng.bit_generator.state = meta["numpy_rng"]
    torch.set_rng_state(tensors["rng/torch"])
    raw = meta["progress"]
    log = TrainLog(**{**raw["log"], "val_loss": [tuple(x) for x in raw["log"]["val_loss"]]})
    progress = _Progress(raw["step"], raw["since"], raw["order"], raw["running"], log, raw["has_best"])
    best = _unflatten(tensors, "best/") if progress.has_best else None
    return _unflatten(tensors, "current/"), best, progress


def train_loop(
    params: Sequence[torch.nn.Parameter],
    n_train: int,
    step_loss: Callable[[np.ndarray], torch.Tensor],
    val_loss: Callable[[], float],
    get_state: Callable[[], dict],
    set_state: Callable[[dict], None],
    settings: TrainSettings,
    description: str,
    checkpoint: Path | None = None,
) -> TrainLog:
    """Train ``params`` on mini-batches of example indices; keep the state with the best validation loss.

    ``step_loss(indices)`` returns the loss of one batch (with gradients); ``val_loss()``
    the validation loss. With ``checkpoint``, the whole training state (weights, best
    weights, optimizer, scheduler, random state, data order) is saved there at every
    validation, and a later call with the same folder resumes from it: the result is the
    same as an uninterrupted run. Deterministic for a given seed.
    """
    import time

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import get_cosine_schedule_with_warmup

    steps_per_epoch = max(1, math.ceil(n_train / settings.batch_size))
    total = max(1, int(round(settings.epochs * steps_per_epoch)))
    if settings.max_steps:
        total = min(total, settings.max_steps)
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(settings.warmup_fraction * total), total)
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    log = TrainLog()
    start = time.perf_counter()
    best_state, since, order, first, running = None, 0, np.array([], dtype=np.int64), 1, None
    if checkpoint is not None and (checkpoint / "state.json").is_file():
        current, best_state, progress = load_checkpoint(checkpoint, opt, sched, rng)
        set_state(current)
        log, since, running, first = progress.log, progress.since, progress.running, progress.step + 1
        order = np.array(progress.order, dtype=np.int64)
        console.print(f"{description}: resuming from the checkpoint at step {progress.step}")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, completed=first - 1, loss="-")
        for step in range(first, total + 1):
            if len(order) < settings.batch_size:
                order = np.concatenate([order, rng.permutation(n_train)])
            batch, order = order[: settings.batch_size], order[settings.batch_size :]
            opt.zero_grad(set_to_none=True)
            loss = step_loss(batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            value = float(loss.detach())
            log.train_loss.append(value)
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.update(task, advance=1, loss=f"{running:.3f}")
            log.steps = step
            if step % settings.eval_every == 0 or step == total:
                current = val_loss()
                log.val_loss.append((step, current))
                if current < log.best_val_loss - 1e-4:
                    log.best_val_loss, log.best_step, since = current, step, 0
                    best_state = get_state()
                else:
                    since += 1
                    if since >= settings.patience:
                        break
                if checkpoint is not None and step < total:
                    save_checkpoint(checkpoint, get_state(), best_state, opt, sched, rng,
                                    _Progress(step, since, order.tolist(), running, log, best_state is not None))
    if best_state is not None:
        set_state(best_state)
    log.seconds += time.perf_counter() - start
    return log


def save_adapters(peft_model, folder: Path) -> None:
    """peft's own format: ``adapter_model.safetensors`` and ``adapter_config.json``."""
    peft_model.save_pretrained(str(folder), safe_serialization=True)


def load_adapters(lm: LoadedModel, folder: Path):
    """Wrap the loaded model with adapters saved by ``save_adapters``."""
    from peft import PeftModel

    lm.model.requires_grad_(False)
    return PeftModel.from_pretrained(lm.model, str(folder), is_trainable=False)
