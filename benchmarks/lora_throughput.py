"""Training throughput and peak memory of LoRA + Prompt for each bundled model.

Usage: .venv/bin/python benchmarks/lora_throughput.py [--steps 12] [--batch-size 8] [--kl-weight 1.0]
Each model is measured in its own subprocess so that peak memory (max RSS on CPU, max
allocated on CUDA) belongs to that model alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(name: str, steps: int, batch_size: int, kl_weight: float) -> dict:
    import numpy as np
    import torch

    from calibtune.data import load_questions
    from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
    from calibtune.methods.lora_prompt import LoraPromptConfig
    from calibtune.models import load_model
    from calibtune.prompts import DEFAULT_QUERY, format_prompt

    lm = load_model(name)
    questions = load_questions("sciq")[: steps * batch_size * 2]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, len(questions))
    answers = [" " + q.choices[q.gold if y else (q.gold + 1) % len(q.choices)] for q, y in zip(questions, labels)]
    seqs = encode_queries(lm.tokenizer, [format_prompt(q) for q in questions], answers, DEFAULT_QUERY)
    # val_fraction 0.5: train on half; evaluate only at the end so the timing is of training steps
    cfg = LoraPromptConfig(kl_weight=kl_weight, val_fraction=0.5, batch_size=batch_size, max_steps=steps,
                           eval_every=10**6, epochs=10)
    est = LoraPromptEstimator(lm, cfg)
    start = time.perf_counter()
    est.fit(seqs, labels)
    seconds = est.log.seconds
    tokens = float(np.mean([len(s.ids) for s in seqs]))
    peak = (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"model": name, "dtype": str(lm.dtype), "steps": est.log.steps, "batch_size": batch_size,
            "kl_weight": kl_weight, "mean_tokens": round(tokens, 1),
            "examples_per_s": round(est.log.steps * batch_size / seconds, 2),
            "seconds_per_step": round(seconds / est.log.steps, 3), "peak_memory_gib": round(peak, 2),
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kl-weight", type=float, default=1.0)
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.batch_size, args.kl_weight)))
        return
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps),
                              "--batch-size", str(args.batch_size), "--kl-weight", str(args.kl_weight)],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['model']:14} {row['dtype']:15} kl_weight {row['kl_weight']}: "
              f"{row['examples_per_s']:6.2f} examples/s ({row['seconds_per_step']:.2f} s/step, "
              f"batch {row['batch_size']}, {row['mean_tokens']:.0f} tokens/example), "
              f"peak memory {row['peak_memory_gib']:.2f} GiB")


if __name__ == "__main__":
    main()
