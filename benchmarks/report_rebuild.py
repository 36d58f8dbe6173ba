"""How long `calibtune report` takes to rebuild a run folder: every metric with 1000 bootstrap
resamples, paired differences, every figure (PNG and SVG) and report.html. No model is loaded.

    .venv/bin/python benchmarks/report_rebuild.py [RUN_FOLDER]

Without a run folder it builds one shaped like the default study: 2 models, Probe, LoRA,
LoRA + Prompt and the zero-shot query on all four cells plus option confidence, 800
evaluation questions per cell (18 cells).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from calibtune.config import StudyConfig, dump_config


def default_shaped_run(folder: Path, n: int = 800) -> None:
    rng = np.random.default_rng(0)
    models = ["smollm2-135m", "gemma3-270m"]
    config = StudyConfig(name="benchmark", models=models, train=[{"dataset": "sciq"}], eval=[{"dataset": "sciq"}],
                         methods=["probe", "lora_prompt", "lora", "zero_shot", "option_confidence"])
    frames = []
    for t in models:
        y = rng.integers(0, 2, n)
        cells = [(m, e) for m in ("probe", "lora", "lora_prompt", "zero_shot") for e in models]
        for method, e in cells + [("option_confidence", t)]:
            p = np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
            frames.append(pd.DataFrame({"method": method, "model": e, "trained_on": t, "evaluated_on": t,
                                        "question_id": [f"sciq/validation/{i}" for i in range(n)], "dataset": "sciq",
                                        "subject": "", "p_correct": p, "label": y, "p_correct_ts": p,
                                        "temperature": 1.0}))
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(config))
    pd.concat(frames, ignore_index=True).to_parquet(folder / "scores.parquet", index=False)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        if len(sys.argv) > 1:
            shutil.copytree(sys.argv[1], run)
        else:
            default_shaped_run(run)
        scores = pd.read_parquet(run / "scores.parquet")
        cells = scores.groupby(["method", "model", "trained_on"]).ngroups
        cli = Path(sys.executable).with_name("calibtune")
        start = time.perf_counter()
        subprocess.run([str(cli), "report", str(run)], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        print(f"calibtune report: {cells} cells, {len(scores)} scores, 1000 resamples: {seconds:.1f} s "
              "(process start and imports included)")


if __name__ == "__main__":
    main()
