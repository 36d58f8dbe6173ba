"""``calibtune ask`` against a finished study's scores: for a seeded sample of a cell's evaluation questions,
the P(correct) that ``ask`` gives (answering the question afresh) beside the cell's ``p_correct_ts`` and
``p_correct`` in ``scores.parquet``.

    .venv/bin/python benchmarks/ask_check.py RUN [--method lora_prompt] [--model E] [--trained-on T] [--n 6]

The run folder must be written by a calibtune that records each cell's temperature (``temperature.json``);
rerunning the study on its store rewrites the folder from the cache in seconds. A study with one cell per
(method, E, T) only: a data-scale run's folders carry the training size (``__n500``) and are not read here.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import pandas as pd

from calibtune.ask import ask
from calibtune.config import load_config
from calibtune.models import model_slugs
from calibtune.questions import study_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--method", nargs="+", default=["lora_prompt", "probe"])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--trained-on", default="gemma3-270m")
    parser.add_argument("--n", type=int, default=6)
    args = parser.parse_args()
    cfg = load_config(args.run / "config.yaml")
    questions = {q.id: q for q in study_questions(cfg).eval}
    scores = pd.read_parquet(args.run / "scores.parquet")
    slug = model_slugs(list(cfg.models))  # the estimator folders are named by these
    for method in args.method:
        cell = scores[(scores.method == method) & (scores.model == args.model)
                      & (scores.trained_on == args.trained_on)].set_index("question_id")
        folder = args.run / "estimators" / method / f"{slug[args.model]}__on__{slug[args.trained_on]}"
        worst = 0.0
        for qid in random.Random(0).sample(sorted(cell.index), args.n):
            q, row = questions[qid], cell.loc[qid]
            [asked] = ask(folder, [q.text], choices=q.choices)  # answered by the model it was trained on
            worst = max(worst, abs(asked.p_correct - row.p_correct_ts))
            print(f"{method} {qid}: ask {asked.p_correct:.3f} (own {asked.p_correct_raw:.3f}, temperature "
                  f"{asked.temperature}), study p_correct_ts {row.p_correct_ts:.3f} (p_correct {row.p_correct:.3f})")
        print(f"{method}: largest |ask - p_correct_ts| {worst:.4f} over {args.n} questions")


if __name__ == "__main__":
    main()
