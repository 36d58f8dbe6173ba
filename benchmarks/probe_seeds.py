"""How much the Probe's evaluation AUROC moves with its seed and with the model passes' precision: one head
(``folds: 1``) against the ensemble of fold heads, on bf16 and fp32 features of the same questions.

    .venv/bin/python benchmarks/probe_seeds.py CONFIG [--seeds 5] [--folds 1 10] [--dtypes bfloat16 float32]

For each cell (estimator model E reading answering model T's answers) of CONFIG, and each dtype, it reads the
answers and E's features from the artifact store (run the study with that dtype first: ``calibtune run CONFIG``
and ``calibtune run CONFIG --dtype float32`` on the same ``CALIBTUNE_CACHE``), fits the Probe with each number of
folds and each seed, and prints the evaluation AUROC of every fit, each setting's mean and standard deviation
over seeds, per seed the difference between the first two dtypes (their labels differ where the answers
do, as in the study), and how far each Probe's AUROC moves when scored against the other dtype's labels (the
labels' share of the difference).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from calibtune.bundled import cache_dir
from calibtune.config import load_config
from calibtune.estimator_settings import ProbeConfig
from calibtune.estimators.probe import ProbeEstimator
from calibtune.questions import study_questions
from calibtune.stages.answers import graded_answers
from calibtune.stages.base import Runtime
from calibtune.stages.features import probe_features
from calibtune.store import ArtifactStore
from calibtune.study import ModelPool


def cell_data(config_path: Path, dtype: str) -> dict[tuple[str, str], tuple]:
    """(E, T) -> (train features, train labels, eval features, eval labels, layers), from the store."""
    cfg = load_config(config_path).model_copy(update={"dtype": dtype})
    rt = Runtime(ArtifactStore(cache_dir() / "store"), lambda *a: None, ModelPool(cfg.dtype, cfg.device, {}), {})
    inputs = study_questions(cfg)
    out = {}
    for answering in cfg.models:
        answers = graded_answers(rt, cfg, inputs, answering, None)
        for estimator in cfg.models:
            table = probe_features(rt, cfg, estimator, answering, answers, inputs)
            out[estimator, answering] = (table.of(inputs.train), np.array([answers[q.id].label for q in inputs.train]),
                                         table.of(inputs.eval), np.array([answers[q.id].label for q in inputs.eval]),
                                         table.layers)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    args = parser.parse_args()
    data = {dtype: cell_data(args.config, dtype) for dtype in args.dtypes}
    for cell in data[args.dtypes[0]]:
        for folds in args.folds:
            auroc: dict[str, list[float]] = {}
            swapped: list[float] = []  # |AUROC against its own labels - against the other dtype's|
            for dtype in args.dtypes:
                x, y, xe, ye, layers = data[dtype][cell]
                auroc[dtype], chosen, start = [], [], time.perf_counter()
                for seed in range(args.seeds):
                    probe = ProbeEstimator(ProbeConfig(folds=folds), layers=layers, seed=seed).fit(x, y)
                    p = probe.p_correct(xe)
                    auroc[dtype].append(roc_auc_score(ye, p))
                    chosen.append(probe.layer_)
                    for other in args.dtypes:
                        if other != dtype:
                            swapped.append(abs(auroc[dtype][-1] - roc_auc_score(data[other][cell][3], p)))
                seconds = (time.perf_counter() - start) / args.seeds
                print(f"{cell[0]} on {cell[1]}, folds {folds}, {dtype}: "
                      f"{' '.join(f'{a:.4f}' for a in auroc[dtype])} (layers {chosen}); mean "
                      f"{np.mean(auroc[dtype]):.4f}, sd {np.std(auroc[dtype]):.4f}; {seconds:.1f} s a fit", flush=True)
            if len(args.dtypes) > 1:
                a, b = args.dtypes[:2]
                diff = np.array(auroc[a]) - np.array(auroc[b])
                print(f"  {a} - {b} by seed: {' '.join(f'{d:+.4f}' for d in diff)}; largest |difference| "
                      f"{np.abs(diff).max():.4f}; a Probe scored against the other dtype's labels moves by "
                      f"{min(swapped):.4f}-{max(swapped):.4f}", flush=True)


if __name__ == "__main__":
    main()
