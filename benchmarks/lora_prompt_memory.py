"""Resident memory of LoRA + Prompt fits on growing training sets, phase by phase, as a data-scale study makes them.

    .venv/bin/python benchmarks/lora_prompt_memory.py [--model smollm2-135m] [--sizes 500 1000 all] [--steps 20]

For each size (a seeded sample of the default study's graded training answers, read from the artifact store or
made there), one fit with the paper's read-out and one with the mid-layer read-out, as ``configs/data_scale.yaml``
trains them, each for ``--steps`` steps with the divergence term on (so the base model's answer-token logits are
kept). Prints the process's resident memory after each phase (base-model read, training, fit done: the divergence
target dropped) and its peak so far, sampled every 50 ms, beside the nominal size of the kept logits. What to look
for: the memory after a fit falling back by about the kept logits' size, and the peak not growing from one size
to the next by more than the larger logits.
"""

from __future__ import annotations

import argparse
import random
import threading
import time

import numpy as np
import psutil

import calibtune.estimators.lora_prompt as lora_prompt
from calibtune.bundled import cache_dir
from calibtune.config import load_config
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
from calibtune.models import load_model
from calibtune.prompts import format_prompt
from calibtune.questions import study_questions
from calibtune.stages.answers import graded_answers
from calibtune.stages.base import Runtime
from calibtune.store import ArtifactStore
from calibtune.study import ModelPool

GIB = 2**30


class Resident:
    """The process's resident memory now and its peak since start, sampled by a background thread."""

    def __init__(self) -> None:
        self.process, self.peak = psutil.Process(), 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.05)

    def line(self, phase: str) -> str:
        now = self.process.memory_info().rss
        self.peak = max(self.peak, now)
        return f"{phase:44s} resident {now / GIB:6.2f} GiB   peak so far {self.peak / GIB:6.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", nargs="+", default=["500", "1000", "all"])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    memory = Resident()
    cfg = load_config(None)
    rt = Runtime(ArtifactStore(cache_dir() / "store"), print, ModelPool(cfg.dtype, cfg.device, {}), {})
    inputs = study_questions(cfg)
    answers = graded_answers(rt, cfg, inputs, args.model, None)
    lm = load_model(args.model, dtype=cfg.dtype)
    print(memory.line(f"{args.model} loaded ({lm.dtype})"))
    settings = cfg.lora_prompt.model_copy(update={"max_train_examples": None, "max_steps": args.steps,
                                                  "eval_every": args.steps, "kl_weight": 1.0})
    head = lm.model.get_output_embeddings().weight
    readings = lora_prompt.BaseReadings()
    run_base, loop = lora_prompt.BaseReadings._run, lora_prompt.train_loop

    def reported_run(self, lm_, seqs, *rest, **kw):
        run_base(self, lm_, seqs, *rest, **kw)
        print(memory.line(f"  base model read {len(seqs)} sequences"))

    def reported_loop(*a, **kw):
        log = loop(*a, **kw)
        print(memory.line(f"  trained {log.steps} steps"))
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
            print(memory.line("  fit done, divergence target dropped"))
    print(memory.line("end"))


if __name__ == "__main__":
    main()
