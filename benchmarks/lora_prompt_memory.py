"""Resident memory of LoRA + Prompt fits on growing training sets, phase by phase, as a data-scale study makes them.

    .venv/bin/python benchmarks/lora_prompt_memory.py [--model smollm2-135m] [--sizes 500 1000 all] [--steps 20]

For each size (a seeded sample of the default study's graded training answers, read from the artifact store or
made there), one fit with the paper's read-out and one read out after two thirds of the layers (as
``configs/data_scale.yaml`` trains both; its ``auto`` layer is the Probe's choice), each for ``--steps`` steps with
the divergence term on (so the base model's answer-token logits are kept). Prints the process's resident memory
after each phase (base-model read, training, fit done: the divergence target dropped) and its peak so far, sampled
every 5 ms, beside the nominal size of the kept logits. What to look for: the memory after a fit falling back by
about the kept logits' size, and the peak not growing from one size to the next by more than the larger logits.
CPU only (resident memory): with a GPU visible it stops.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import PeakMemory  # noqa: E402

import calibtune.estimators.lora_prompt as lora_prompt  # noqa: E402
from calibtune.bundled import cache_dir  # noqa: E402
from calibtune.config import load_config  # noqa: E402
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries  # noqa: E402
from calibtune.models import load_model  # noqa: E402
from calibtune.prompts import format_prompt  # noqa: E402
from calibtune.questions import study_questions  # noqa: E402
from calibtune.stages.answers import graded_answers  # noqa: E402
from calibtune.stages.base import Runtime  # noqa: E402
from calibtune.store import ArtifactStore  # noqa: E402
from calibtune.study import ModelPool  # noqa: E402

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", nargs="+", default=["500", "1000", "all"])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if torch.cuda.is_available():
        parser.error("this measures a CPU run's resident memory: hide the GPU (CUDA_VISIBLE_DEVICES=)")
    with PeakMemory() as memory:  # its sampler keeps the peak resident memory since entry
        measure(args, memory)


def line(memory: PeakMemory, phase: str) -> str:
    """The resident memory now and the peak since the benchmark started."""
    now = memory.process.memory_info().rss
    memory.peak = max(memory.peak, now)
    return f"{phase:44s} resident {now / GIB:6.2f} GiB   peak so far {memory.peak / GIB:6.2f} GiB"


def measure(args: argparse.Namespace, memory: PeakMemory) -> None:
    """The fits, each phase's line printed as it ends."""
    cfg = load_config(None)
    rt = Runtime(ArtifactStore(cache_dir() / "store"), print, ModelPool(cfg.dtype, cfg.device, {}), {})
    inputs = study_questions(cfg)
    answers = graded_answers(rt, cfg, inputs, args.model, None)
    lm = load_model(args.model, dtype=cfg.dtype)
    print(line(memory, f"{args.model} loaded ({lm.dtype})"))
    settings = cfg.lora_prompt.model_copy(update={"max_train_examples": None, "max_steps": args.steps,
                                                  "eval_every": args.steps, "kl_weight": 1.0})
    head = lm.model.get_output_embeddings().weight
    readings = lora_prompt.BaseReadings()
    run_base, loop = lora_prompt.BaseReadings._run, lora_prompt.train_loop

    def reported_run(self, lm_, seqs, *rest, **kw):
        run_base(self, lm_, seqs, *rest, **kw)
        print(line(memory, f"  base model read {len(seqs)} sequences"))

    def reported_loop(*a, **kw):
        log = loop(*a, **kw)
        print(line(memory, f"  trained {log.steps} steps"))
        return log

    lora_prompt.BaseReadings._run, lora_prompt.train_loop = reported_run, reported_loop
    pool = list(inputs.train)
    for size in args.sizes:
        n = len(pool) if size == "all" else min(int(size), len(pool))
        train = random.Random(0).sample(pool, n)
        seqs = encode_queries(lm.tokenizer, [format_prompt(q, cfg.prompt) for q in train],
                              [cfg.option_prefix + answers[q.id].text for q in train], settings.query)
        labels = np.array([answers[q.id].label for q in train])
        kept = lora_prompt._answer_rows(seqs) * head.shape[0] * head.element_size() * (1 - settings.val_fraction)
        for readout, label in ((None, "paper read-out"), (lm.model.config.num_hidden_layers * 2 // 3, "mid-layer")):
            where = "" if readout is None else f" after layer {readout}"
            print(f"{n} answers, {label}{where} (kept logits about {kept / GIB:.2f} GiB)")
            LoraPromptEstimator(lm, settings, readout=readout).fit(seqs, labels, base=readings).release()
            print(line(memory, "  fit done, divergence target dropped"))
    print(line(memory, "end"))


if __name__ == "__main__":
    main()
