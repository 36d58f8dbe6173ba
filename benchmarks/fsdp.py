"""Adapter training by two processes on this CPU, the model replicated (DDP's way) or sharded (FSDP), against one.

    .venv/bin/python benchmarks/fsdp.py [--model smollm2-135m] [--steps 12] [--examples 400] [--dtype auto]

Trains LoRA + Prompt on a bundled model (``--dtype``: bf16 where the CPU runs it fast, or float32; dropout
off) with the default study's settings for ``--steps`` steps on ARC-Easy answers (each question with one of
its options; correct when it is the key), once in one process and once in two for each ``adapter_sharding``.
Prints, for each run, seconds per training step, the bytes of model weights each process holds after training
(the sharded layers' local shards; the rest whole, FSDP's root, the embeddings, unsharded after a forward
pass), its peak resident memory, and the largest and mean difference of P(correct) on the held-out answers
from the single process's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def worker(model: str, steps: int, examples: int, dtype: str, sharding: str, out: Path) -> None:
    """One process's part: train, score the held-out answers, write what it measured."""
    import numpy as np
    import psutil
    from torch.distributed.tensor import DTensor

    from calibtune.data import load_questions
    from calibtune.distributed import ONE_PROCESS, Ranks
    from calibtune.estimator_settings import LoraPromptConfig
    from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
    from calibtune.models import load_model
    from calibtune.prompts import format_prompt

    ranks = Ranks.current()
    parallel = ranks.groups(2, sharded=sharding == "fsdp")[1] if ranks.count > 1 else ONE_PROCESS
    lm = load_model(model, dtype=dtype)
    questions = load_questions("arc_easy", split="validation")[:examples]
    prompts = [format_prompt(q) for q in questions]
    chosen = [i % len(q.choices) for i, q in enumerate(questions)]
    answers = [" " + q.choices[c] for q, c in zip(questions, chosen)]
    labels = np.array([int(c == q.gold) for q, c in zip(questions, chosen)])
    cfg = LoraPromptConfig(max_steps=steps, eval_every=steps, dropout=0.0, max_train_examples=None)
    seqs = encode_queries(lm.tokenizer, prompts, answers, cfg.query)
    est = LoraPromptEstimator(lm, cfg).fit(seqs, labels, parallel=parallel)
    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size()
               for p in lm.model.parameters())
    held += sum(b.numel() * b.element_size() for b in lm.model.buffers())
    p_val = est.predict_proba([seqs[i] for i in est.val_indices])
    result = {"rank": ranks.index, "step_seconds": est.log.step_seconds / est.log.steps, "weights_bytes": held,
              "peak_rss": psutil.Process().memory_info().rss, "p_val": p_val.tolist(),
              "train_loss": est.log.train_loss}
    try:
        import resource

        result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:
        pass
    (out / f"{sharding}-{ranks.count}-{ranks.index}.json").write_text(json.dumps(result))
    est.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--worker", nargs=2, metavar=("SHARDING", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.steps, args.examples, args.dtype, args.worker[0], Path(args.worker[1]))
        return
    out = Path(tempfile.mkdtemp(prefix="calibtune-fsdp-"))
    common = [__file__, "--model", args.model, "--steps", str(args.steps), "--examples", str(args.examples),
              "--dtype", args.dtype]
    runs = [("one process", "replicate", [sys.executable]),
            ("2 processes, replicate", "replicate", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      "--nproc-per-node=2"]),
            ("2 processes, fsdp", "fsdp", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                            "--nproc-per-node=2"])]
    rows = []
    for label, sharding, launch in runs:
        subprocess.run([*launch, *common, "--worker", sharding, str(out)], check=True,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}, capture_output=True)
        n = 1 if label == "one process" else 2
        rows.append((label, [json.loads((out / f"{sharding}-{n}-{r}.json").read_text()) for r in range(n)]))
    base = rows[0][1][0]["p_val"]
    print(f"{args.model} ({args.dtype}), LoRA + Prompt, {args.steps} steps at batch 8, {args.examples} ARC-Easy "
          f"answers ({len(base)} held out)")
    print(f"{'run':26} {'s/step':>7} {'weights/process':>16} {'peak RSS/process':>17} {'|dP| vs one: max':>17} "
          f"{'mean':>9}")
    for label, results in rows:
        diffs = [abs(a - b) for a, b in zip(results[0]["p_val"], base)]
        print(f"{label:26} {max(r['step_seconds'] for r in results):7.2f} "
              f"{max(r['weights_bytes'] for r in results) / 2**20:13.0f} MiB "
              f"{max(r['peak_rss'] for r in results) / 2**20:14.0f} MiB {max(diffs):17.2e} "
              f"{sum(diffs) / len(diffs):9.2e}")


if __name__ == "__main__":
    main()
