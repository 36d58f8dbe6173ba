"""Run by ``torchrun`` from ``tests/test_distributed.py``: LoRA + Prompt trained by two processes with FSDP,
uninterrupted, then killed after its second checkpoint and resumed; rank 0 writes both results as JSON.

Usage: torchrun --nproc-per-node 2 fsdp_resume.py MODEL_FOLDER OUT_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))  # the tests' shared helpers
from toy import crash_after_checkpoints, separable_toy  # noqa: E402


def main(model: str, out: Path) -> None:
    from calibtune.distributed import Ranks
    from calibtune.estimator_settings import LoraPromptConfig
    from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
    from calibtune.models import load_model

    ranks = Ranks.current()
    _, parallel = ranks.groups(2, sharded=True)
    prompts, answers, labels = separable_toy(48)
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=4, max_steps=8, eval_every=2, patience=10, dropout=0.0)

    def fit(checkpoint: Path | None = None) -> tuple[list[float], dict]:
        lm = load_model(model, dtype="float32")  # a fresh copy each time: FSDP spends the one it shards
        seqs = encode_queries(lm.tokenizer, prompts, answers, cfg.query)
        est = LoraPromptEstimator(lm, cfg).fit(seqs, labels, checkpoint, parallel=parallel)
        sharded = [p for p in est._peft.parameters() if type(p).__name__ == "DTensor"]
        held = sum(p.to_local().numel() for p in sharded) / sum(p.numel() for p in sharded)
        p = est.predict_proba(seqs).tolist()
        est.release()
        return p, {"train_loss": est.log.train_loss, "val_loss": est.log.val_loss, "held": held}

    expected, expected_log = fit()
    try:
        with crash_after_checkpoints(2):  # every process dies after the checkpoint at step 4
            fit(out / "checkpoint")
    except KeyboardInterrupt:
        pass
    ranks.wait()
    resumed, resumed_log = fit(out / "checkpoint")
    if ranks.main:
        (out / "result.json").write_text(json.dumps({"expected": expected, "expected_log": expected_log,
                                                     "resumed": resumed, "resumed_log": resumed_log}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
