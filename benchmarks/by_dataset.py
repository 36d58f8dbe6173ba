"""A run's trained cells on parts of its evaluation set: accuracy, mean P(correct) and ECE after the run's
temperature scaling, and AUROC, per group of datasets.

    .venv/bin/python benchmarks/by_dataset.py RUN [--group arc_easy,sciq --group openbookqa,commonsense_qa]
                                              [--methods probe probe_last lora_prompt]

Each ``--group`` is a comma-separated list of the ``dataset`` names in ``scores.parquet`` (default: one group per
dataset). It prints one markdown row per cell: ECE after temperature scaling over every evaluation answer, then
"accuracy, mean P after TS, ECE after TS, AUROC" for each group. The temperature is the one the run fitted on
held-out training answers, the same for every group, so a group whose accuracy differs from the training mix's
shows the base-rate shift that no temperature undoes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from calibtune.metrics import auroc, ece
from calibtune.report.labels import method_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--group", action="append", default=None, help="datasets, comma-separated")
    parser.add_argument("--methods", nargs="*", default=["lora_prompt", "probe", "probe_last"])
    args = parser.parse_args()
    scores = pd.read_parquet(args.run / "scores.parquet")
    scores = scores[scores.method.isin(args.methods)]
    groups = [g.split(",") for g in args.group] if args.group else [[d] for d in sorted(scores.dataset.unique())]
    sizes = [int(scores[scores.dataset.isin(g)].question_id.nunique()) for g in groups]
    print("| method | model | trained on | ECE after TS, all | "
          + " | ".join(f"{' + '.join(g)} ({n})" for g, n in zip(groups, sizes)) + " |")
    print("|---|---|---|---|" + "---|" * len(groups))
    for (method, e, t), cell in scores.groupby(["method", "model", "trained_on"], sort=True):
        parts = []
        for g in groups:
            part = cell[cell.dataset.isin(g)]
            parts.append(f"{part.label.mean():.3f}, {part.p_correct_ts.mean():.3f}, "
                         f"{ece(part.p_correct_ts, part.label):.3f}, {auroc(part.p_correct, part.label):.3f}")
        print(f"| {method_label(method)} | {e} | {t} | {ece(cell.p_correct_ts, cell.label):.3f} | "
              + " | ".join(parts) + " |")


if __name__ == "__main__":
    main()
