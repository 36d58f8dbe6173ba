"""How low temperature scaling could take each cell's ECE: the run's own temperature against the best one there is.

    .venv/bin/python benchmarks/temperature_bound.py RUN [--methods probe lora_prompt ...]

For each cell of a run folder's ``scores.parquet``: accuracy and mean P(correct) on the evaluation answers,
ECE before and after the run's temperature scaling (fitted on held-out answers disjoint from the evaluation
set), ECE after the temperature that minimises NLL on the evaluation answers themselves, and the lowest ECE
any temperature reaches there (a grid of 400 temperatures from 0.05 to 20, log-spaced). The last two are
oracles, fitted on what they score: they bound what recalibration by one temperature can do for these
scores, whatever held-out answers it is fitted on. A temperature cannot move the mean P(correct) towards the
accuracy when the scores sit on the wrong side of 0.5 for it, so a gap between the two (a base rate that
differs between the training mix and the evaluation set) stays.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from calibtune.calibration import TemperatureScaler
from calibtune.metrics import ece


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--methods", nargs="*", default=None, help="methods to show (default: every one)")
    args = parser.parse_args()
    scores = pd.read_parquet(args.run / "scores.parquet")
    if args.methods:
        scores = scores[scores.method.isin(args.methods)]
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    print("| method | model | trained on | accuracy | mean P | ECE | ECE after the run's TS | "
          "ECE after the NLL-best T (oracle) | lowest ECE over T (oracle) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (method, e, t), cell in scores.groupby(["method", "model", "trained_on"], sort=True):
        p, y = cell.p_correct.to_numpy(), cell.label.to_numpy()
        oracle = TemperatureScaler.fit(p, y)
        lowest = min((ece(TemperatureScaler(float(temp)).transform(p), y), temp) for temp in grid)
        print(f"| {method} | {e} | {t} | {y.mean():.3f} | {p.mean():.3f} | {ece(p, y):.3f} | "
              f"{ece(cell.p_correct_ts.to_numpy(), y):.3f} (T {cell.temperature.iloc[0]:.2f}) | "
              f"{ece(oracle.transform(p), y):.3f} (T {oracle.temperature:.2f}) | {lowest[0]:.3f} (T {lowest[1]:.2f}) |")


if __name__ == "__main__":
    main()
