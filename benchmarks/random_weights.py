"""Random-weight stand-ins for models whose weights cannot go where a check runs (a lent GPU machine
takes 64 MiB, and the bundled models' weights are 100-250 MB): the same config, tokenizer and
shapes, so every pass costs what the real model's costs, though its answers are noise.

    python benchmarks/random_weights.py like FOLDER [--bundled NAME | --out OUT]
    python benchmarks/random_weights.py shape HUB_ID --tokenizer FOLDER --out OUT [--layers N]

``like`` copies a model folder's config and tokenizer files and fills the weights at random;
with ``--bundled NAME`` it writes the folder where ``$CALIBTUNE_CACHE`` keeps that bundled
model's conversion, so ``calibtune`` and ``benchmarks/run.py`` load it by its bundled name.
``shape`` builds a model of a published shape (``calibtune.plan.KNOWN_CONFIGS``, e.g.
``mistralai/Mistral-7B-v0.1``) with another tokenizer's vocabulary, optionally with fewer layers.
Weights are drawn on the GPU when there is one, in bf16 there, fp32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from calibtune.bundled import BUNDLED, converted_dir
from calibtune.plan import KNOWN_CONFIGS

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "generation_config.json")


def build(config, out: Path) -> tuple[float, int]:
    """Draw random weights for ``config`` and save them to ``out``; the seconds it took and the parameters."""
    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return time.perf_counter() - start, sum(p.numel() for p in model.parameters())


def like(folder: Path, out: Path) -> None:
    """A random-weight copy of the model in ``folder`` (its config and tokenizer files) at ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copy(folder / name, out / name)
    seconds, params = build(AutoConfig.from_pretrained(folder), out)
    print(f"random weights like {folder} at {out}: {params / 1e6:.0f}M parameters in {seconds:.1f} s")


def shape(hub_id: str, tokenizer: Path, out: Path, layers: int | None) -> None:
    """A random-weight model of ``hub_id``'s published shape, with ``tokenizer``'s vocabulary, at ``out``."""
    known = dict(KNOWN_CONFIGS[hub_id])
    tok = AutoTokenizer.from_pretrained(tokenizer)
    model_type = known.pop("model_type")
    known.update(vocab_size=len(tok), num_hidden_layers=layers or known["num_hidden_layers"],
                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    config = AutoConfig.for_model(model_type, **known)
    tok.save_pretrained(out)
    seconds, params = build(config, out)
    print(f"random {hub_id} shape ({config.num_hidden_layers} layers, vocabulary {len(tok)}) at {out}: "
          f"{params / 1e9:.2f}B parameters in {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_like = sub.add_parser("like")
    p_like.add_argument("folder", type=Path)
    where = p_like.add_mutually_exclusive_group(required=True)
    where.add_argument("--bundled", choices=sorted(BUNDLED))
    where.add_argument("--out", type=Path)
    p_shape = sub.add_parser("shape")
    p_shape.add_argument("hub_id", choices=sorted(KNOWN_CONFIGS))
    p_shape.add_argument("--tokenizer", type=Path, required=True)
    p_shape.add_argument("--out", type=Path, required=True)
    p_shape.add_argument("--layers", type=int)
    args = parser.parse_args()
    if args.command == "like":
        out = args.out
        if args.bundled:
            model = BUNDLED[args.bundled]
            out = converted_dir(model)
        like(args.folder, out)
        if args.bundled:  # the mark of a finished conversion, so the bundled name loads this folder
            (out / "calibtune-model.json").write_text(json.dumps(
                {"bundled": model.name, "gguf": model.gguf_name, "sha256": model.sha256,
                 "random_weights": True}, indent=2))
    else:
        shape(args.hub_id, args.tokenizer, args.out, args.layers)


if __name__ == "__main__":
    main()
