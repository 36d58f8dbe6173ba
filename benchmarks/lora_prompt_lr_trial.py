"""The learning-rate trial behind the default LoRA + Prompt settings.

Usage: .venv/bin/python benchmarks/lora_prompt_lr_trial.py E T '{"lr": 0.003, "epochs": 2, "layers": "top_half"}'
Trains LoRA + Prompt on estimator model E with answering model T's graded answers to a
seeded sample of 800 training questions of the default study, and prints the held-out
AUROC on the default study's evaluation questions, the fit time and the validation-loss
curve. Answers come from (and go to) the artifact store, so run the default study first
to avoid answering again.
"""

from __future__ import annotations

import json
import random
import sys
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from calibtune.bundled import cache_dir
from calibtune.config import load_config
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
from calibtune.methods.lora_prompt import LoraPromptConfig
from calibtune.models import load_model
from calibtune.prompts import DEFAULT_QUERY, format_prompt
from calibtune.questions import study_questions
from calibtune.stages.answers import graded_answers
from calibtune.stages.base import Runtime
from calibtune.store import ArtifactStore
from calibtune.study import ModelPool


def main() -> None:
    estimator, answering, variant = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cfg = load_config(None)
    timings: dict[str, float] = {}
    rt = Runtime(ArtifactStore(cache_dir() / "store"), lambda msg: None, ModelPool(cfg.dtype, cfg.device, timings),
                 timings)
    inputs = study_questions(cfg)
    answers = graded_answers(rt, cfg, inputs, answering, None)
    lm = load_model(estimator)

    def encode(questions):
        return encode_queries(lm.tokenizer, [format_prompt(q) for q in questions],
                              [" " + answers[q.id].text for q in questions], DEFAULT_QUERY)

    train = random.Random(0).sample(inputs.train, variant.get("n", 800))
    y_train = np.array([answers[q.id].label for q in train])
    y_eval = np.array([answers[q.id].label for q in inputs.eval])
    config = LoraPromptConfig(layers=variant.get("layers", "all"), kl_weight=variant.get("kl", 1.0),
                              learning_rate=variant.get("lr", 1e-3), batch_size=8, epochs=variant.get("epochs", 1.0),
                              eval_every=20, patience=variant.get("patience", 4))
    start = time.perf_counter()
    est = LoraPromptEstimator(lm, config).fit(encode(train), y_train)
    fit_s = time.perf_counter() - start
    p = est.predict_proba(encode(inputs.eval))
    print(json.dumps({"estimator": estimator, "answering": answering, "variant": variant,
                      "auroc": round(roc_auc_score(y_eval, p), 3), "fit_s": round(fit_s), "steps": est.log.steps,
                      "best_step": est.log.best_step, "val_loss": [(s, round(v, 4)) for s, v in est.log.val_loss]}))


if __name__ == "__main__":
    main()
