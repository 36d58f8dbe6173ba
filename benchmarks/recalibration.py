"""What LoRA + Prompt's ``recalibrate: platt`` did in a run: each cell's ECE after the study's temperature
scaling with and without the Platt map on the query's logit.

    .venv/bin/python benchmarks/recalibration.py RUN [--methods lora_prompt lora_prompt_readout]

For each saved LoRA + Prompt estimator of RUN (``RUN/estimators/<method>/<E>__on__<T>``) trained with
``recalibrate: platt``, it rebuilds the cell's held-out answers (T's graded training answers from the artifact
store, split as training split them: ``held_out_parts`` with the run's seed, the part the map was fitted on),
scores them with the kept adapters, and takes the query's own logit back out of the evaluation answers' P(correct)
in ``scores.parquet`` by inverting the recorded map (slope > 0, so the inverse is exact up to float rounding).
Then, per cell: the map, the temperature fitted on the held-out answers with and without it (the first should equal
the run's), AUROC on the evaluation answers and on the held-out ones at the kept step, the slope a Platt scaling
would take if fitted on the evaluation answers themselves (a diagnostic: in-sample), ECE after temperature scaling
on the evaluation answers with the map, without it, and with a map that has one slope and a bias per dataset
(fitted on the same held-out answers; ``dataset_bias_map``), and the mean P(correct) after temperature scaling
against the accuracy. AUROC is the same with the map or without (it is increasing). Run it with the store the run
used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from calibtune.bundled import cache_dir
from calibtune.calibration import PlattScaler, TemperatureScaler
from calibtune.config import load_config
from calibtune.estimators import load_estimator
from calibtune.estimators.lora_prompt import encode_queries, held_out_parts, query_yes_logits
from calibtune.metrics import auroc, ece
from calibtune.models import load_model
from calibtune.prompts import format_prompt
from calibtune.questions import study_questions
from calibtune.stages.answers import graded_answers
from calibtune.stages.base import Runtime
from calibtune.store import ArtifactStore
from calibtune.study import ModelPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--methods", nargs="*", default=["lora_prompt", "lora_prompt_readout"])
    args = parser.parse_args()
    cfg = load_config(args.run / "config.yaml")
    scores = pd.read_parquet(args.run / "scores.parquet")
    timings: dict[str, float] = {}
    rt = Runtime(ArtifactStore(cache_dir() / "store"), print, ModelPool(cfg.dtype, cfg.device, timings), timings)
    inputs = study_questions(cfg)
    answers = {t: graded_answers(rt, cfg, inputs, t, None) for t in cfg.models}
    lms: dict = {}
    print("| method | model | trained on | slope | bias | temperature (run) | temperature: recalibrated / raw | "
          "AUROC: evaluation / held-out | slope refitted on the evaluation answers | "
          "ECE after TS: recalibrated / raw query / a bias per dataset | mean P after TS: recalibrated / raw | "
          "accuracy |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for e in cfg.models:
            for t in cfg.models:
                folder = args.run / "estimators" / method / f"{e}__on__{t}"
                cell = scores[(scores.method == method) & (scores.model == e) & (scores.trained_on == t)]
                if not folder.is_dir() or cell.empty:
                    continue
                info = json.loads((folder / "lora_prompt.json").read_text())
                if not info.get("recalibration"):
                    print(f"{method} {e} on {t}: trained without recalibrate: platt", flush=True)
                    continue
                lm = lms.setdefault(e, load_model(e, dtype=cfg.dtype, device=cfg.device))
                est = load_estimator(folder, lm)
                settings = est.config
                train = list(inputs.train)  # the default's max_train_examples: null (every training answer)
                if settings.max_train_examples is not None and settings.max_train_examples < len(train):
                    raise SystemExit(f"{folder}: trained on a sample of the training answers; not rebuilt here")
                y_train = np.array([answers[t][q.id].label for q in train])
                _, choose, calibrate = held_out_parts(y_train, settings, cfg.seed)
                val = calibrate if len(calibrate) else choose  # the answers the map was fitted on
                seqs = encode_queries(lm.tokenizer, [format_prompt(train[i], cfg.prompt) for i in val],
                                      [cfg.option_prefix + answers[t][train[i].id].text for i in val], settings.query)
                z_val = query_yes_logits(lm, seqs, est.token_ids, settings.batch_size * 2, f"held-out {e} on {t}",
                                         est.readout)
                est.release()
                a, b = est.recalibration.slope, est.recalibration.bias
                y_val, y = y_train[val], cell.label.to_numpy()
                p = cell.p_correct.to_numpy()
                z_raw = (logit(np.clip(p, 1e-15, 1 - 1e-15)) - b) / a
                mapped = TemperatureScaler.fit(expit(a * z_val + b), y_val)
                raw = TemperatureScaler.fit(expit(z_val), y_val)
                p_mapped, p_raw = mapped.transform(p), raw.transform(expit(z_raw))
                refit = PlattScaler.fit_logits(z_raw, y)
                by_dataset = dataset_bias_map(z_val, y_val, [train[i].dataset for i in val])
                by_dataset_val = by_dataset(z_val, [train[i].dataset for i in val])
                p_by_dataset = TemperatureScaler.fit(by_dataset_val, y_val).transform(by_dataset(z_raw, cell.dataset))
                print(f"| {method} | {e} | {t} | {a:.3f} | {b:+.3f} | {cell.temperature.iloc[0]:.3f} | "
                      f"{mapped.temperature:.3f} / {raw.temperature:.3f} | {auroc(p, y):.3f} / "
                      f"{auroc(expit(z_val), y_val):.3f} | {refit.slope:.3f} | {ece(p_mapped, y):.3f} / "
                      f"{ece(p_raw, y):.3f} / {ece(p_by_dataset, y):.3f} | {p_mapped.mean():.3f} / "
                      f"{p_raw.mean():.3f} | {y.mean():.3f} |", flush=True)


def dataset_bias_map(z: np.ndarray, y: np.ndarray, datasets: list[str]):
    """A Platt scaling with one slope and a bias per dataset (unpenalised logistic regression of ``y`` on the
    logit and the dataset's indicator), fitted on the held-out answers; returns ``P(z, datasets)``. A dataset
    the held-out answers lack gets the mean bias."""
    from sklearn.linear_model import LogisticRegression

    names = sorted(set(datasets))

    def design(logits, sets) -> np.ndarray:
        sets = np.asarray(list(sets))
        return np.column_stack([logits] + [(sets == n).astype(float) for n in names])

    coef = LogisticRegression(C=np.inf, fit_intercept=False).fit(design(z, datasets), y).coef_[0]

    def apply(logits, sets) -> np.ndarray:
        x = design(logits, sets)
        unknown = x[:, 1:].sum(axis=1) == 0
        return expit(x @ coef + unknown * coef[1:].mean())

    return apply


if __name__ == "__main__":
    main()
