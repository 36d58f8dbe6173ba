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
from typing import Any

import numpy as np
import torch

from calibtune.distributed import ONE_PROCESS, DataParallel, clip_grad_norm, full_tensor, is_spent, like
from calibtune.errors import CalibtuneError
from calibtune.estimator_settings import AdapterConfig
from calibtune.models import LoadedModel
from calibtune.progress import console

# Where the architecture gives no default: the usual names of attention projections.
FALLBACK_TARGETS = (("q_proj", "v_proj"), ("qkv_proj",), ("query_key_value",), ("c_attn",), ("Wqkv",))

@dataclass
class TrainLog:
    """What happened during training, saved with the estimator. ``val_loss`` holds the held-out figure that
    ``criterion`` names (``held_out_score``), the one training minimised to choose the step it kept."""

    steps: int = 0
    best_step: int = 0
    best_val_loss: float = float("inf")
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    criterion: str = "loss"
    seconds: float = 0.0
    step_seconds: float = 0.0  # of ``seconds``, the time in training steps (validations excluded)


def kept_held_out(log: TrainLog, validated: Sequence[np.ndarray],
                  initial: np.ndarray | None = None) -> np.ndarray | None:
    """The held-out answers' logits at the step training kept, from those of the validations this process ran
    (``validated``, in order: the last ``len(validated)`` entries of ``log.val_loss``) and, if known apart,
    ``initial``, the untrained model's (step 0). None when the kept step was validated before a resume, so the
    caller scores the held-out answers again; otherwise the kept adapters need no second pass over them."""
    tail = log.val_loss[len(log.val_loss) - len(validated):] if validated else []
    by_step = {step: z for (step, _), z in zip(tail, validated)}
    if initial is not None:
        by_step.setdefault(0, initial)
    return by_step.get(log.best_step)


# What ``TrainLog.val_loss`` holds for each ``keep``, as logs and tables name it.
CRITERIA = {"loss": "loss", "last": "loss", "calibrated_loss": "calibrated loss", "auroc": "1 - AUROC"}


def held_out_score(keep: str, logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The figure training minimises over its validations (lower is better), from the held-out answers' logits
    of P(correct), their labels (1: correct) and weights (default: equal).

    ``loss`` and ``last``: the weighted cross-entropy. ``calibrated_loss``: the same after a Platt scaling fitted
    on these answers, so that a shift or scale of the logit, which the study's temperature scaling undoes
    anyway, neither hides nor fakes progress in ranking. ``auroc``: one minus the weighted AUROC.
    """
    from scipy.special import expit
    from sklearn.metrics import log_loss, roc_auc_score

    from calibtune.calibration import PlattScaler

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    w = np.ones(len(z)) if weights is None else np.asarray(weights, dtype=np.float64)
    if keep in ("loss", "last"):
        return float(np.sum(np.logaddexp(0.0, -z * (2 * y - 1)) * w) / np.sum(w))
    if keep == "calibrated_loss":
        p = expit(z)
        return float(log_loss(y, PlattScaler.fit(p, y, w).transform(p), sample_weight=w, labels=[0, 1]))
    if keep == "auroc":
        return 1.0 - float(roc_auc_score(y, z, sample_weight=w))
    raise CalibtuneError(f"unknown keep '{keep}': use loss, calibrated_loss, auroc or last")


def linear_module_names(model) -> list[str]:
    """The distinct last names of the model's linear layers (what LoRA can target), adapted ones included.

    GPT-2 style models build their projections as transformers' ``Conv1D`` (a transposed linear layer).
    """
    from transformers.pytorch_utils import Conv1D

    names = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if not name or parts[-1] == "base_layer" or any(p.startswith("lora_") for p in parts):
            continue  # peft's own wrappers and adapter weights
        if isinstance(getattr(module, "base_layer", module), (torch.nn.Linear, Conv1D)):
            names.add(parts[-1])
    return sorted(names)


def target_modules(lm: LoadedModel, settings: AdapterConfig) -> list[str]:
    """The module names LoRA adapts: peft's default for the architecture when ``auto``, else the names given,
    each checked against the model's linear layers (a one-line error names the ones that exist)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    present = linear_module_names(lm.model)
    config = lm.model.config
    model_type = getattr(getattr(config, "text_config", None) or config, "model_type", config.model_type)
    if settings.target_modules == "auto":
        for names in (DEFAULTS.get(model_type) or DEFAULTS.get(config.model_type) or (), *FALLBACK_TARGETS):
            if names and all(n in present for n in names):
                return list(names)
        raise CalibtuneError(f"no default LoRA target modules for model '{lm.name}' ({model_type}); set "
                             f"target_modules to some of its linear layers: {', '.join(present)}")
    missing = [n for n in settings.target_modules if n not in present]
    if missing:
        raise CalibtuneError(f"LoRA target module '{missing[0]}' is not in model '{lm.name}' ({model_type}); its "
                             f"linear layers are: {', '.join(present)} (or use target_modules: auto)")
    return list(settings.target_modules)


def attach_lora(lm: LoadedModel, settings: AdapterConfig, seed: int, layers: Sequence[int] | None = None,
                parallel: DataParallel = ONE_PROCESS):
    """Wrap the model with fresh LoRA adapters (peft), on ``layers`` only if given (None: every layer; the caller
    chooses them, as ``LoraPromptEstimator.adapted_layers`` does for ``layers: top_half``); returns the PeftModel.
    A group that shards the weights (``parallel.sharded``) shards them now, adapters included."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(seed)
    targets = target_modules(lm, settings)
    transposed = any(isinstance(m, Conv1D) for n, m in lm.model.named_modules() if n.rsplit(".", 1)[-1] in targets)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none", fan_in_fan_out=transposed,
                        layers_to_transform=list(layers) if layers is not None else None)
    lm.model.requires_grad_(False)
    with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(lm.model, config)
    if lm.device.type == "cpu":
        use_bit_dropout(peft_model)
    # LoRA weights train in fp32 even when the base model runs in bf16.
    for name, param in peft_model.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
    if parallel.sharded:
        if settings.batch_size < parallel.size:  # a member with no share of a batch would skip FSDP's collectives
            raise CalibtuneError(f"adapter_sharding: fsdp needs batch_size ({settings.batch_size}) at least the "
                                 f"number of processes that train a cell together ({parallel.size})")
        parallel.shard_decoder(lm.model)
    return peft_model


class BitDropout(torch.nn.Module):
    """Inverted dropout whose mask comes from 16 random bits per element, drawn 64 at a time.

    On a CPU torch draws dropout's mask one Mersenne-Twister number per element: at LoRA's input in a
    SmolLM2 step (60 masks of 8 x 48 x 576) that was 12% of a profiled step, and this made SmolLM2's steps 1.07x
    faster (Gemma's 1.02x; ``benchmarks/lora_step.py``). Here each element is dropped when its
    16 bits fall below ``round(p * 65536)``, so the rate is ``p`` to within 1/131072 and the kept values are
    scaled by the exact ``1 / (1 - rate)``: still unbiased. The bits come from torch's generator, so a
    checkpoint's saved random state replays the same masks.
    """

    def __init__(self, p: float):
        super().__init__()
        self.threshold = round(p * 65536)
        self.scale = 65536 / (65536 - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        words = -(-x.numel() // 4)
        bits = torch.empty(words, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
        keep = bits.view(torch.int16)[: x.numel()].view(x.shape) >= self.threshold - 32768
        return torch.where(keep, x * self.scale, 0.0)


def use_bit_dropout(peft_model) -> None:
    """Put ``BitDropout`` in place of torch's dropout at every LoRA input of ``peft_model``."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for name, dropout in module.lora_dropout.items():
                if isinstance(dropout, torch.nn.Dropout):
                    module.lora_dropout[name] = BitDropout(dropout.p)


def detach_lora(peft_model) -> None:
    """Remove the adapters, leaving the base model as it was (a model sharded by FSDP is spent: left as it is)."""
    if not is_spent(peft_model.get_base_model()):
        peft_model.unload()


def lora_state(peft_model) -> dict[str, torch.Tensor]:
    """A copy of the trainable adapter weights, whole (gathered when FSDP shards them: every member calls this)."""
    return {k: full_tensor(v.detach()).clone() for k, v in peft_model.named_parameters() if v.requires_grad}


def load_lora_state(peft_model, state: dict[str, torch.Tensor]) -> None:
    """Put adapter weights (from ``lora_state``) back."""
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(like(v, params[k]))


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


def save_checkpoint(folder: Path, current: dict, best: dict | None, opt, sched, rng, progress: _Progress,
                    write: bool = True, averaged: dict | None = None) -> None:
    """Write a training checkpoint atomically: safetensors for tensors, JSON for the rest (no pickle). Optimizer
    state sharded by FSDP is gathered whole first, so every member of such a group calls this, and the one
    with ``write`` writes. ``averaged``: the moving average of the weights, when training keeps one."""
    import json
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_file

    opt_state = opt.state_dict()
    tensors = _flatten("current/", current, {})
    if best is not None:
        _flatten("best/", best, tensors)
    if averaged is not None:
        _flatten("ema/", averaged, tensors)
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt/{index}/{key}"] = full_tensor(value.detach()).contiguous().clone()
    if not write:
        return
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{index}"] = state
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


def load_checkpoint(folder: Path, opt, sched, rng) -> tuple[dict, dict | None, _Progress, dict | None]:
    """Restore optimizer, scheduler and random state from a checkpoint; return the weights (current and best),
    the progress, and the moving average of the weights (None when the checkpoint has none)."""
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
    params = [p for group in opt.param_groups for p in group["params"]]
    for param in params:  # FSDP's parameters keep their optimizer state sharded as they are
        for key, value in opt.state.get(param, {}).items():
            if torch.is_tensor(value) and value.shape == param.shape and value.dim() > 0:
                opt.state[param][key] = like(value, param)
    sched.last_epoch = meta["scheduler"]["last_epoch"]
    sched._last_lr = [group["lr"] for group in opt.param_groups]
    rng.bit_generator.state = meta["numpy_rng"]
    torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[f"rng/cuda/{i}"] for i in range(sum(name.startswith("rng/cuda/") for name in tensors))]
    if cuda:
        if not torch.cuda.is_available() or torch.cuda.device_count() != len(cuda):
            raise CalibtuneError(f"checkpoint {folder} was written on {len(cuda)} CUDA devices; resume it on as many")
        torch.cuda.set_rng_state_all(cuda)
    raw = meta["progress"]
    log = TrainLog(**{**raw["log"], "val_loss": [tuple(x) for x in raw["log"]["val_loss"]]})
    progress = _Progress(raw["step"], raw["since"], raw["order"], raw["running"], log, raw["has_best"])
    best = _unflatten(tensors, "best/") if progress.has_best else None
    averaged = _unflatten(tensors, "ema/") if any(name.startswith("ema/") for name in tensors) else None
    return _unflatten(tensors, "current/"), best, progress, averaged


def train_loop(
    params: Sequence[torch.nn.Parameter],
    n_train: int,
    step_loss: Callable[[np.ndarray], torch.Tensor],
    val_loss: Callable[[], float],
    get_state: Callable[[], dict],
    set_state: Callable[[dict], None],
    settings: AdapterConfig,
    seed: int,
    description: str,
    checkpoint: Path | None = None,
    initial_val_loss: float | None = None,
    lengths: Sequence[int] | None = None,
    parallel: DataParallel = ONE_PROCESS,
) -> TrainLog:
    """Train ``params`` on mini-batches of example indices; keep the state with the best validation figure.

    ``step_loss(indices)`` returns the loss of one batch (with gradients); ``val_loss()`` the held-out figure
    that ``settings.keep`` names (``held_out_score``; lower is better). The first validation is at step 0,
    before any update (its figure is ``initial_val_loss`` when the caller already knows it), so when training
    does not help, early stopping keeps the untrained state; it ends training at the first validation that finds
    ``settings.patience`` validations without improvement, once ``settings.stop_after`` of the steps are done (a
    flat start, noisy under warm-up, then does not end training). With ``keep: last`` nothing stops early and the
    last step is kept (validations are still run and logged). With ``lengths`` (of the training sequences), each
    epoch's shuffled order is grouped by length (``epoch_order``), so a batch pads little. With
    ``checkpoint``, the whole training state
    (weights, best weights, optimizer, scheduler, random state, data order) is saved there at
    every validation, and a later call with the same folder resumes from it: the result is
    the same as an uninterrupted run. Deterministic for a given seed.

    With ``settings.ema_decay``, an exponential moving average of ``params`` is kept beside them (the decay
    warmed up as ``min(decay, (1 + t) / (10 + t))`` at step t, as TensorFlow's and timm's averages do); it is
    what is validated and kept as the best state, while the optimizer steps the weights themselves.

    With ``parallel`` (a group of processes training together), every member draws the same
    batches; ``step_loss`` computes the member's share of a batch (``parallel.shard``),
    normalised as the whole batch's loss, and the gradients are summed over the group before
    the step, so each member takes the step one process would. The leader alone saves
    checkpoints; every member resumes from them.
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
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    steps_per_epoch = max(1, math.ceil(n_train / settings.batch_size))
    total = max(1, int(round(settings.epochs * steps_per_epoch)))
    if settings.max_steps:
        total = min(total, settings.max_steps)
    opt = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = get_linear_schedule_with_warmup if settings.schedule == "linear" else get_cosine_schedule_with_warmup
    sched = schedule(opt, int(settings.warmup_fraction * total), total)
    rng = np.random.default_rng(seed)  # the batches: the same on every member of a group
    torch.manual_seed(seed + parallel.index)  # dropout: each member's own
    log = TrainLog(criterion=CRITERIA[settings.keep])
    start = time.perf_counter()
    best_state, since, order, first, running = None, 0, np.array([], dtype=np.int64), 1, None
    average = WeightAverage(params, settings.ema_decay) if settings.ema_decay else None
    if checkpoint is not None and (checkpoint / "state.json").is_file():
        current, best_state, progress, averaged = load_checkpoint(checkpoint, opt, sched, rng)
        if average is not None:
            if averaged is None:
                raise CalibtuneError(f"checkpoint {checkpoint} keeps no weight average; delete it to train "
                                     "with ema_decay from the start")
            set_state(averaged)
            average.reset()
        set_state(current)
        log, since, running, first = progress.log, progress.since, progress.running, progress.step + 1
        order = np.array(progress.order, dtype=np.int64)
        console.print(f"{description}: resuming from the checkpoint at step {progress.step}")
    else:
        loss0 = val_loss() if initial_val_loss is None else initial_val_loss
        log.val_loss.append((0, loss0))
        log.best_val_loss, log.best_step, best_state = loss0, 0, get_state()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, completed=first - 1, loss="-")
        for step in range(first, total + 1):
            if len(order) < settings.batch_size:
                order = np.concatenate([order, epoch_order(rng, n_train, settings.batch_size, lengths)])
            batch, order = order[: settings.batch_size], order[settings.batch_size :]
            step_start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = step_loss(batch)
            if loss.requires_grad:  # a member with no share of the batch has nothing to differentiate
                loss.backward()
            (value,) = parallel.reduce(params, [float(loss.detach())])
            clip_grad_norm(params, settings.max_grad_norm)
            opt.step()
            sched.step()
            if average is not None:
                average.update(step)
            log.step_seconds += time.perf_counter() - step_start
            log.train_loss.append(value)
            running = value if running is None else 0.9 * running + 0.1 * value
            bar.update(task, advance=1, loss=f"{running:.3f}")
            log.steps = step
            if step % settings.eval_every == 0 or step == total:
                current = val_loss() if average is None else average.applied(val_loss)
                averaged = None if average is None else average.applied(get_state)  # kept if best, checkpointed
                log.val_loss.append((step, current))
                if current < log.best_val_loss - 1e-4 or settings.keep == "last":
                    log.best_val_loss, log.best_step, since = current, step, 0
                    best_state = get_state() if averaged is None else averaged
                else:
                    since += 1
                    if since >= settings.patience and step >= settings.stop_after * total:
                        break
                if checkpoint is not None and step < total and (parallel.leader or parallel.sharded):
                    save_checkpoint(checkpoint, get_state(), best_state, opt, sched, rng,
                                    _Progress(step, since, order.tolist(), running, log, best_state is not None),
                                    write=parallel.leader, averaged=averaged)
    if best_state is not None:
        set_state(best_state)
    log.seconds += time.perf_counter() - start
    return log


class WeightAverage:
    """An exponential moving average of some parameters, kept beside them in their own dtype and device."""

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.params, self.decay = list(params), decay
        self.reset()

    def reset(self) -> None:
        """Start the average at the parameters' present values."""
        self.values = [p.detach().clone() for p in self.params]

    def update(self, step: int) -> None:
        """Fold in the parameters after optimizer step ``step`` (1-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for value, param in zip(self.values, self.params):
                value.lerp_(param.detach(), 1 - decay)

    def applied(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` with the average in the parameters' place; the parameters are restored after."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, value in zip(self.params, self.values):
                param.copy_(value)
        try:
            return fn()
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, saved):
                    param.copy_(value)


LENGTH_GROUP = 16  # batches whose sequences are sorted together by length


def epoch_order(rng: np.random.Generator, n: int, batch_size: int, lengths: Sequence[int] | None) -> np.ndarray:
    """One epoch's order of training examples: a random permutation, and, given the sequences' lengths, each run
    of ``LENGTH_GROUP`` batches sorted by length and the batches shuffled again (transformers' group-by-length
    sampler does the same), so that a batch holds sequences of about one length and pads little."""
    order = rng.permutation(n)
    if lengths is None:
        return order
    size = batch_size * LENGTH_GROUP
    groups = [sorted(order[i:i + size], key=lambda k: -lengths[k]) for i in range(0, n, size)]
    batches = [g[i:i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    return np.concatenate([batches[i] for i in rng.permutation(len(batches))]).astype(np.int64)


def save_adapters(peft_model, folder: Path) -> None:
    """peft's own format: ``adapter_model.safetensors`` and ``adapter_config.json`` (adapters sharded by FSDP are
    gathered whole: every member calls this)."""
    peft_model.save_pretrained(str(folder), safe_serialization=True, state_dict=lora_state(peft_model))


def load_adapters(lm: LoadedModel, folder: Path):
    """Wrap the loaded model with adapters saved by ``save_adapters``."""
    from peft import PeftModel

    lm.model.requires_grad_(False)
    with warnings.catch_warnings():  # peft calls a transformers method that transformers 5 deprecates
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(lm.model, str(folder), is_trainable=False)


def saved_config(config_type: type[AdapterConfig], info: dict) -> tuple[AdapterConfig, int]:
    """The config and seed recorded in a saved adapter estimator's JSON.

    Reads calibtune 0.1's layout too, which nested the settings as ``lora``, ``train``
    and ``query`` and called the LoRA head's dropout ``dropout``.
    """
    data = dict(info["config"])
    seed = int(info.get("seed", data.get("seed", 0)))
    if "lora" in data and "train" in data:
        top = {k: v for k, v in data.items() if k not in ("lora", "train", "query", "seed")}
        if "dropout" in top:
            top["head_dropout"] = top.pop("dropout")
        flat = {**data["lora"], **{k: v for k, v in data["train"].items() if k != "seed"}, **top}
        if isinstance(data.get("query"), dict):
            flat["query"], flat["options"] = data["query"]["query"], tuple(data["query"]["options"])
        data = flat
    data.pop("seed", None)
    return config_type.model_validate(data), seed
