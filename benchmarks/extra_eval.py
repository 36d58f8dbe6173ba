"""Score a run's saved estimators on more held-out questions, with each cell's own temperature.

    .venv/bin/python benchmarks/extra_eval.py RUN openbookqa:test:300 commonsense_qa:validation:180 \
        [--methods probe probe_last lora_prompt] [--seed 0]

Each ``dataset:split:n`` draws n questions (seeded) from that split, leaving out every question the run
answered (its training and evaluation questions). Each answering model of the run answers them by cloze
scoring with the run's prompt; each saved estimator (``RUN/estimators/<method>/<E>__on__<T>``) scores T's
answers; the cell's temperature (fitted by the run on its held-out training answers, in ``scores.parquet``)
is applied unchanged. It prints, per cell, AUROC and ECE after that temperature on the run's evaluation
answers and on those with the new ones added, and the accuracy and mean P(correct) of the union.

Why: temperature scaling is fitted on held-out training answers, so it can calibrate only an evaluation set
drawn like the training set. This measures how a run's calibration changes when its evaluation set is
widened to the training mix's other sets, without training anything again.

With ``--calibrate`` the new answers are a calibration set instead (what a study's ``calibrate:`` does, on a
run made without one): each cell's temperature is fitted on the saved estimator's P(correct) of them, and it
prints, per cell, AUROC on the run's evaluation answers and on the new ones, the run's temperature and the new
one, and ECE after each on the run's evaluation answers, with the mean P(correct) after the new one.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from calibtune.answer import ClozeSettings, answer_multiple_choice
from calibtune.calibration import TemperatureScaler
from calibtune.data import load_questions
from calibtune.estimators import load_estimator
from calibtune.graders import grade_answers
from calibtune.metrics import auroc, ece
from calibtune.models import load_model


def draw(spec: str, seed: int, answered: set[str]) -> list:
    """``dataset:split:n``: n questions of that split, seeded, none of them among ``answered``."""
    dataset, split, n = spec.split(":")
    pool = [q for q in load_questions(dataset, split=split) if q.id not in answered]
    return random.Random(f"{seed}-{dataset}-{split}-extra").sample(pool, min(int(n), len(pool)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("extra", nargs="+", help="dataset:split:n")
    parser.add_argument("--methods", nargs="*", default=["probe", "probe_last", "lora_prompt"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", action="store_true", help="fit each cell's temperature on the new answers")
    args = parser.parse_args()
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    scores = pd.read_parquet(args.run / "scores.parquet")
    models = config["models"]
    answered = set().union(*(pd.read_parquet(args.run / "answers" / f"{m}.parquet").question_id for m in models))
    questions = [q for spec in args.extra for q in draw(spec, args.seed, answered)]
    settings = ClozeSettings(prompt=config["prompt"], option_prefix=config["option_prefix"], select=config["select"])
    lms = {m: load_model(m, dtype=config["dtype"], device=config["device"]) for m in models}
    answers, labels = {}, {}
    for t in models:
        chosen = grade_answers(answer_multiple_choice(lms[t], questions, settings), questions)
        answers[t] = [a.text for a in chosen]
        labels[t] = np.array([a.label for a in chosen])
    print(f"{len(questions)} more questions ({', '.join(args.extra)}); accuracy "
          + ", ".join(f"{t} {labels[t].mean():.3f}" for t in models))
    if args.calibrate:
        print("| method | model | trained on | AUROC: evaluation / calibration answers | temperature: run / "
              "calibration set | ECE after TS: run / calibration set's temperature | mean P after it | accuracy |")
        print("|---|---|---|---|---|---|---|---|")
    else:
        print("| method | model | trained on | AUROC (run) | ECE after TS (run) | AUROC (with more) | "
              "ECE after TS (with more) | accuracy (with more) | mean P after TS (with more) |")
        print("|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for e in models:
            for t in models:
                folder = args.run / "estimators" / method / f"{e}__on__{t}"
                cell = scores[(scores.method == method) & (scores.model == e) & (scores.trained_on == t)]
                if not folder.is_dir() or cell.empty:
                    continue
                estimator = load_estimator(folder, lms[e])
                p_new = np.asarray(estimator.estimate(questions, answers[t]), dtype=float)
                if hasattr(estimator, "release"):
                    estimator.release()
                scaler = TemperatureScaler(float(cell.temperature.iloc[0]))
                if args.calibrate:
                    refit = TemperatureScaler.fit(p_new, labels[t])
                    p_ts = refit.transform(cell.p_correct.to_numpy())
                    print(f"| {method} | {e} | {t} | {auroc(cell.p_correct, cell.label):.3f} / "
                          f"{auroc(p_new, labels[t]):.3f} | {scaler.temperature:.3f} / {refit.temperature:.3f} | "
                          f"{ece(cell.p_correct_ts, cell.label):.3f} / {ece(p_ts, cell.label):.3f} | "
                          f"{p_ts.mean():.3f} | {cell.label.mean():.3f} |", flush=True)
                    continue
                p = np.concatenate([cell.p_correct.to_numpy(), p_new])
                y = np.concatenate([cell.label.to_numpy(), labels[t]])
                p_ts = scaler.transform(p)
                print(f"| {method} | {e} | {t} | {auroc(cell.p_correct, cell.label):.3f} | "
                      f"{ece(cell.p_correct_ts, cell.label):.3f} | {auroc(p, y):.3f} | {ece(p_ts, y):.3f} | "
                      f"{y.mean():.3f} | {p_ts.mean():.3f} |", flush=True)


if __name__ == "__main__":
    main()
