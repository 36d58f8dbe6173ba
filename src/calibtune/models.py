"""Load causal language models by bundled name, local path, or Hugging Face id; name them for caches.

Bundled models (``calibtune.bundled``) are converted once from their GGUF files and loaded from
the cached folder. Passes run in bf16 where the hardware runs it fast, else fp32.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calibtune.bundled import BUNDLED, cache_dir, ensure_converted, quiet_transformers, sha256_of
from calibtune.errors import CalibtuneError, first_line
from calibtune.settings import DTYPE_NAMES


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for forward passes, with its tokenizer and where it came from."""

    name: str
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    dtype: torch.dtype
    device: torch.device
    source: str  # the folder or hub id it was loaded from

    @property
    def num_layers(self) -> int:
        """Number of transformer layers (hidden states run from 0, the embeddings, to this)."""
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        return int(config.num_hidden_layers)


def choose_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available (under a distributed launcher, the GPU of the process's local rank),
    else the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise CalibtuneError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N") from exc


def choose_dtype(dtype: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """Resolve a dtype name; ``auto`` means bf16 where the hardware runs it fast, else fp32."""
    if dtype != "auto":
        if dtype not in DTYPE_NAMES:
            raise CalibtuneError(f"unknown dtype '{dtype}': use auto, {', '.join(sorted(DTYPE_NAMES))}")
        return getattr(torch, DTYPE_NAMES[dtype])
    device = device or choose_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_fast_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_source(name: str) -> str:
    """Turn a model name into something ``from_pretrained`` loads: a folder or a hub id."""
    if name in BUNDLED:
        return str(ensure_converted(BUNDLED[name]))
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CalibtuneError(f"model folder '{name}' has no config.json: not a transformers model folder")
        return str(path)
    if _looks_like_path(name):
        raise CalibtuneError(f"model path '{name}' does not exist")
    return name


def load_model(
    name: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False, fused_norms: bool = True
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, on the chosen device and dtype.

    ``name`` is a bundled name (see ``BUNDLED``), a local folder, or a Hugging Face id
    (loaded from the local hub cache, or the hub where it is reachable). ``fused_norms=False``
    keeps transformers' own RMSNorm code (see ``fuse_rms_norms``), as the naive benchmark does.
    """
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    source = resolve_source(name)
    try:
        with quiet_transformers():
            try:  # a folder, or a hub id already in the local hub cache: no network
                tokenizer, model = _from_pretrained(source, torch_dtype, trust_remote_code, local_only=True)
            except OSError:
                if source != name:
                    raise
                tokenizer, model = _from_pretrained(source, torch_dtype, trust_remote_code, local_only=False)
    except Exception as exc:  # transformers and safetensors raise many kinds for a bad model folder
        reason = first_line(exc)
        if source == name and name not in BUNDLED and not Path(name).exists():
            raise CalibtuneError(
                f"unknown model '{name}': not a bundled name ({', '.join(BUNDLED)}), not a local folder, "
                f"and not loadable as a Hugging Face id ({reason})"
            ) from exc
        raise CalibtuneError(f"could not load model '{name}' from {source}: {reason}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(torch_device)
    model.eval()
    model.requires_grad_(False)
    _contiguous_head_input(model)
    if fused_norms:
        fuse_rms_norms(model)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, dtype=torch_dtype, device=torch_device,
                       source=source)


def _contiguous_head_input(model) -> None:
    """Make the output layer's input contiguous before it runs.

    ``generate``'s first step hands the head ``hidden[:, -1:, :]``, a strided view. torch
    2.13 multiplies such a 3-d view by expanding the weight to one copy per row: 12.7 s
    instead of 0.04 s for a batch of 16 on Gemma's 262k x 640 head.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def fuse_rms_norms(model) -> int:
    """Run each of the model's RMSNorms as one ``torch.nn.functional.rms_norm`` call; return how many.

    transformers' RMSNorm is five elementwise passes over the hidden states (cast to fp32, square,
    mean, multiply by the reciprocal root, cast back) before its weight; torch's fused kernel
    makes one. On the CPU that takes a norm over 8 x 64 x 576 fp32 states from 1.27 to 0.35 ms,
    and the results, values and gradients, are bit for bit those of transformers' code (tested
    per architecture). Only norms whose class runs exactly the Llama or Gemma 3 code, compared
    as source text, are replaced, so a norm of another form, or a later transformers that
    changes the code, keeps its own forward.
    """
    fused = 0
    for module in model.modules():
        forward = _fused_forward(type(module))
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            fused += 1
    return fused


def _llama_rms_norm(self, hidden_states: torch.Tensor) -> torch.Tensor:
    normed = torch.nn.functional.rms_norm(hidden_states.float(), (hidden_states.shape[-1],), None,
                                          self.variance_epsilon)
    return self.weight * normed.to(hidden_states.dtype)


def _gemma3_rms_norm(self, x: torch.Tensor) -> torch.Tensor:
    # Gemma multiplies by (1 + weight) in fp32 and rounds once, after it (transformers PR 29402).
    return torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), 1.0 + self.weight.float(), self.eps).type_as(x)


@functools.cache
def _fused_forward(cls: type):
    """The fused forward for ``cls`` when it is a transformers RMSNorm running exactly Llama's or
    Gemma 3's code, else None."""
    if not cls.__name__.endswith("RMSNorm") or not cls.__module__.startswith("transformers.models."):
        return None
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    try:
        source = inspect.getsource(cls.forward)
        for reference, fused in ((LlamaRMSNorm, _llama_rms_norm), (Gemma3RMSNorm, _gemma3_rms_norm)):
            if source == inspect.getsource(reference.forward):
                return fused
    except (OSError, TypeError):  # no source on disk (a frozen install): keep transformers' forward
        pass
    return None


def _from_pretrained(source: str, dtype: torch.dtype, trust_remote_code: bool, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    # transformers 5 swaps in hub kernels by default wherever the `kernels` package is installed (transformers
    # requires it): on CUDA, model.train() then fetches kernel code from the hub at run time, which fails
    # offline (seen on an H200) and would make the numbers depend on downloaded code. calibtune runs torch's.
    return tokenizer, AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_kernels=False, **kwargs)


def model_fingerprint(name: str) -> str:
    """A string that changes when the model's weights may have changed, for cache keys and saved estimators.

    Bundled models are named by their pinned hash; a local folder by the sha256 of its
    files (names and contents, so a copied or moved folder keeps its fingerprint; each
    file's hash is remembered by size and modification time, so only changed files are
    read again); a Hugging Face id by its resolved revision (the commit hash of the
    snapshot in the local hub cache, else of the hub's current revision).
    """
    if name in BUNDLED:
        return f"bundled:{BUNDLED[name].sha256}"
    path = Path(name).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        digest = hashlib.sha256(json.dumps([(f.name, _file_sha256(f)) for f in files]).encode()).hexdigest()
        return f"folder:{digest[:32]}"
    return f"hub:{name}@{_hub_revision(name) or 'unresolved'}"


def _file_sha256(path: Path) -> str:
    """sha256 of a file's content, remembered in the cache by (path, size, mtime)."""
    memo_path = cache_dir() / "file-hashes.json"
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = sha256_of(path)
        try:  # best effort: a read-only cache only costs a re-hash next time
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".file-hashes-", dir=memo_path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump(memo, handle)
            os.replace(tmp, memo_path)
        except OSError:
            pass
    return memo[key]


def _hub_revision(repo_id: str) -> str | None:
    """The commit hash a hub id resolves to: the local hub cache's snapshot, else the hub's answer."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # not in the local cache (huggingface_hub raises several kinds)
        pass
    try:
        return HfApi().model_info(repo_id, timeout=10).sha
    except Exception:  # offline, unknown id, or no access: loading the model will say why
        return None


def model_reference(name: str) -> str:
    """How a saved estimator names its model so that it loads from any working folder: a local
    folder by its absolute path, a bundled name or hub id as it is."""
    if name in BUNDLED:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def model_slugs(names: list[str]) -> dict[str, str]:
    """A distinct folder name for each model ("org-a/Llama-3-8B" -> "org-a--Llama-3-8B" when another
    model is also called Llama-3-8B; else just "Llama-3-8B")."""
    from calibtune.naming import distinct_short_names

    short = distinct_short_names(names, sep="--")
    return {n: "".join(c if c.isalnum() or c in "-._" else "_" for c in s) for n, s in short.items()}


def context_limit(lm: LoadedModel) -> int | None:
    """The longest sequence the model reads (its position embeddings), or None when it sets no limit."""
    config = getattr(lm.model.config, "text_config", None) or lm.model.config
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None


def model_num_layers(name: str) -> int:
    """Number of transformer layers, read from the model's config (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_source(name))
    config = getattr(config, "text_config", None) or config
    return int(config.num_hidden_layers)
