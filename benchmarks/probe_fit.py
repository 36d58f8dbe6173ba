"""The Probe's fit with AdamW's multi-tensor (foreach) step against its per-tensor loop, side by side in one run.

    .venv/bin/python benchmarks/probe_fit.py [--answers 1970] [--hidden 576 640] [--repeats 2]

Features are synthetic but shaped like the default study's (``--answers`` training answers, four candidate
layers, each bundled model's hidden size), with labels from a planted linear signal plus noise, so the heads stop
early after a few dozen epochs as on real answers (out-of-fold AUROC about 0.7). Each way fits the default
ensemble (ten heads per layer, four layers) ``--repeats`` times, alternating, after one untimed fit; it prints
seconds per fit and checks that both ways give the same P(correct) bit for bit.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from calibtune.estimator_settings import ProbeConfig
from calibtune.estimators.probe import ProbeEstimator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=int, default=1970)
    parser.add_argument("--hidden", type=int, nargs="+", default=[576, 640])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    adam = torch.optim.AdamW
    ways = {"foreach AdamW": adam, "per-tensor AdamW": lambda *a, **k: adam(*a, **{**k, "foreach": False})}
    print(f"torch threads {torch.get_num_threads()}")
    for hidden in args.hidden:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.answers, 4, hidden)).astype(np.float32)
        signal = x[:, 1, :16].sum(1) / 4 + x[:, 2, :8].sum(1) / 4
        y = (signal + rng.normal(scale=2.0, size=args.answers) > 0).astype(np.int64)
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        p_by_way = {}
        ProbeEstimator(ProbeConfig(), layers=(1, 2, 3, 4), seed=0).fit(x, y)  # untimed
        for _ in range(args.repeats):
            for way, optimizer in ways.items():
                torch.optim.AdamW = optimizer
                start = time.perf_counter()
                probe = ProbeEstimator(ProbeConfig(), layers=(1, 2, 3, 4), seed=0).fit(x, y)
                seconds[way].append(time.perf_counter() - start)
                p_by_way[way] = probe.p_correct(x)
        torch.optim.AdamW = adam
        same = np.array_equal(*p_by_way.values())
        scores = ", ".join(f"{k}: {v:.3f}" for k, v in probe.layer_scores_.items())
        print(f"hidden {hidden}, {args.answers} answers: layer {probe.layer_} (out-of-fold AUROC {scores}); "
              f"epochs by head {[h.epochs for h in probe.heads_]}")
        for way, values in seconds.items():
            print(f"  {way}: {', '.join(f'{v:.1f}' for v in values)} s per fit")
        ratio = np.mean(seconds["per-tensor AdamW"]) / np.mean(seconds["foreach AdamW"])
        print(f"  speed-up {ratio:.2f}x; the same P(correct) bit for bit: {same}")


if __name__ == "__main__":
    main()
