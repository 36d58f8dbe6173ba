"""Time the bootstrap report of a study-sized synthetic scores table.

Usage: .venv/bin/python benchmarks/report_metrics.py [--cells 20] [--questions 800] [--resamples 1000]
Builds a scores table of CELLS cells (method x model x trained_on) with QUESTIONS
questions each, then times bootstrap_table (every metric, RESAMPLES resamples),
paired_table (lora_prompt - probe, every cell they share) and subject_breakdown.
The target is well under 20 seconds for the whole report on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from calibtune.bootstrap import bootstrap_table, paired_table, subject_breakdown


def synthetic_scores(cells: int, questions: int, seed: int = 0) -> pd.DataFrame:
    """A scores table of ``cells`` cells, two methods on the same questions, p rounded to create ties."""
    rng = np.random.default_rng(seed)
    models = [f"model-{i}" for i in range(max(1, int(np.ceil(np.sqrt(cells / 2)))))]
    keys = [(m, e, t) for e in models for t in models for m in ("probe", "lora_prompt")][:cells]
    subjects = np.array([f"subject-{i % 57}" for i in range(questions)])
    labels = {(e, t): (rng.uniform(size=questions) < 0.6).astype(int) for _, e, t in keys}
    frames = []
    for method, e, t in keys:
        y = labels[(e, t)]
        signal = 0.25 if method == "lora_prompt" else 0.15
        p = np.clip(0.55 + signal * (y - 0.5) + rng.normal(0, 0.2, questions), 0, 1).round(3)
        frames.append(pd.DataFrame({"method": method, "model": e, "trained_on": t, "evaluated_on": t,
                                    "question_id": [f"q{i:04d}" for i in range(questions)],
                                    "subject": subjects, "p_correct": p, "label": y}))
    return pd.concat(frames, ignore_index=True)


def timed(label: str, fn: Callable[..., pd.DataFrame], *args: Any, **kwargs: Any) -> pd.DataFrame:
    """Run ``fn`` once and print its wall time."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"{label}: {time.perf_counter() - start:.2f} s ({len(result)} rows)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--questions", type=int, default=800)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    scores = synthetic_scores(args.cells, args.questions)
    print(f"{scores.groupby(['method', 'model', 'trained_on']).ngroups} cells x {args.questions} questions, "
          f"{args.resamples} resamples")
    start = time.perf_counter()
    timed("bootstrap_table", bootstrap_table, scores, n_resamples=args.resamples)
    timed("paired_table", paired_table, scores, [("lora_prompt", "probe")], n_resamples=args.resamples)
    timed("subject_breakdown", subject_breakdown, scores)
    print(f"whole report: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
