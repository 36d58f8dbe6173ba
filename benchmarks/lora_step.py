"""LoRA + Prompt training steps on the study's real answers, with calibtune's CPU dropout and with torch's, side
by side in one run (seconds per step are noisy from run to run on a shared machine: compare within a run).

    .venv/bin/python benchmarks/lora_step.py [--models smollm2-135m gemma3-270m] [--answers 300] [--steps 60]
                                             [--repeats 2]

For each model: a seeded sample of its graded training answers from the artifact store (run the default study
first), LoRA + Prompt with the default study's settings for ``--steps`` steps, timed with ``BitDropout`` at the
adapters' inputs (what calibtune does on a CPU) and with torch's ``nn.Dropout`` (peft's default), alternating,
``--repeats`` times each, after one untimed fit. Prints seconds per step (the training loop's own step time,
validation excluded).
"""

from __future__ import annotations

import argparse
import random

import numpy as np

import calibtune.estimators.adapters as adapters
from calibtune.bundled import cache_dir
from calibtune.config import load_config
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
from calibtune.models import load_model
from calibtune.prompts import format_prompt
from calibtune.questions import study_questions
from calibtune.stages.answers import graded_answers
from calibtune.stages.base import Runtime
from calibtune.store import ArtifactStore
from calibtune.study import ModelPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--answers", type=int, default=300)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cfg = load_config(None)
    rt = Runtime(ArtifactStore(cache_dir() / "store"), print, ModelPool(cfg.dtype, cfg.device, {}), {})
    inputs = study_questions(cfg)
    bit_dropout = adapters.use_bit_dropout
    settings = cfg.lora_prompt.model_copy(update={"max_train_examples": None, "max_steps": args.steps,
                                                  "eval_every": 10**6})
    for name in args.models:
        answers = graded_answers(rt, cfg, inputs, name, None)
        train = random.Random(0).sample(list(inputs.train), args.answers)
        lm = load_model(name, dtype=cfg.dtype)
        seqs = encode_queries(lm.tokenizer, [format_prompt(q, cfg.prompt) for q in train],
                              [cfg.option_prefix + answers[q.id].text for q in train], settings.query)
        labels = np.array([answers[q.id].label for q in train])
        times: dict[str, list[float]] = {"BitDropout": [], "torch dropout": []}
        # an untimed fit first: the first passes at each new shape pay for oneDNN's kernel generation
        LoraPromptEstimator(lm, settings).fit(seqs, labels).release()
        for _ in range(args.repeats):
            for variant in times:
                adapters.use_bit_dropout = bit_dropout if variant == "BitDropout" else (lambda model: None)
                est = LoraPromptEstimator(lm, settings).fit(seqs, labels)
                est.release()
                times[variant].append(est.log.step_seconds / est.log.steps)
        adapters.use_bit_dropout = bit_dropout
        mean_tokens = np.mean([len(s.ids) for s in seqs])
        for variant, values in times.items():
            print(f"{name}: {variant}: {', '.join(f'{v:.3f}' for v in values)} s per step "
                  f"(batch {settings.batch_size}, {mean_tokens:.1f} tokens per answer)")
        print(f"{name}: speed-up {np.mean(times['torch dropout']) / np.mean(times['BitDropout']):.2f}x")


if __name__ == "__main__":
    main()
