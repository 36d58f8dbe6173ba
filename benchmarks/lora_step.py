"""LoRA + Prompt training steps on the study's real answers, two ways side by side in one run (seconds per step are
noisy from run to run on a shared machine: compare within a run).

    .venv/bin/python benchmarks/lora_step.py [--models smollm2-135m gemma3-270m] [--answers 300] [--steps 60]
                                             [--repeats 2] [--compare dropout | lower_states | optimizer]

For each model: a seeded sample of its graded training answers from the artifact store (run the default study
first), LoRA + Prompt with the default study's settings for ``--steps`` steps, alternating the two ways,
``--repeats`` times each, after one untimed fit:
- ``dropout``: ``BitDropout`` at the adapters' inputs (what calibtune does on a CPU) against torch's
  ``nn.Dropout`` (peft's default);
- ``lower_states``: adapters on the top half (``layers: top_half``), validating every 20 steps, with the states
  entering the first adapted layer kept from the base pass (what calibtune does) against whole passes in every
  step and validation (``LOWER_STATES_BUDGET`` 0);
- ``optimizer``: AdamW's multi-tensor (``foreach``) step, which the Probe asks for, against its per-tensor loop
  (torch's default on the CPU, which the adapters keep: no measured difference; README, "Performance").
Prints seconds per step (the training loop's own step time) and the seconds spent validating.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

import calibtune.estimators.adapters as adapters
import calibtune.estimators.lora_prompt as lora_prompt
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
    parser.add_argument("--compare", choices=["dropout", "lower_states", "optimizer"], default="dropout")
    args = parser.parse_args()
    cfg = load_config(None)
    rt = Runtime(ArtifactStore(cache_dir() / "store"), print, ModelPool(cfg.dtype, cfg.device, {}), {})
    inputs = study_questions(cfg)
    bit_dropout, lower_budget = adapters.use_bit_dropout, lora_prompt.LOWER_STATES_BUDGET
    settings = cfg.lora_prompt.model_copy(update={"max_train_examples": None, "max_steps": args.steps,
                                                  "eval_every": 10**6})
    ways = ("BitDropout", "torch dropout")
    if args.compare == "lower_states":
        settings = settings.model_copy(update={"layers": "top_half", "eval_every": 20})
        ways = ("kept lower states", "whole passes")
    adam = torch.optim.AdamW
    if args.compare == "optimizer":
        ways = ("foreach AdamW", "per-tensor AdamW")
    for name in args.models:
        answers = graded_answers(rt, cfg, inputs, name, None)
        train = random.Random(0).sample(list(inputs.train), args.answers)
        lm = load_model(name, dtype=cfg.dtype)
        seqs = encode_queries(lm.tokenizer, [format_prompt(q, cfg.prompt) for q in train],
                              [cfg.option_prefix + answers[q.id].text for q in train], settings.query)
        labels = np.array([answers[q.id].label for q in train])
        times: dict[str, list[float]] = {way: [] for way in ways}
        validating: dict[str, list[float]] = {way: [] for way in ways}
        # an untimed fit first: the first passes at each new shape pay for oneDNN's kernel generation
        LoraPromptEstimator(lm, settings).fit(seqs, labels).release()
        for _ in range(args.repeats):
            for variant in times:
                adapters.use_bit_dropout = bit_dropout if variant != "torch dropout" else (lambda model: None)
                lora_prompt.LOWER_STATES_BUDGET = 0 if variant == "whole passes" else lower_budget
                foreach = variant == "foreach AdamW"
                torch.optim.AdamW = adam if args.compare != "optimizer" else (
                    lambda *a, foreach=foreach, **k: adam(*a, **{**k, "foreach": foreach}))
                est = LoraPromptEstimator(lm, settings).fit(seqs, labels)
                est.release()
                times[variant].append(est.log.step_seconds / est.log.steps)
                validating[variant].append(est.log.seconds - est.log.step_seconds)
        adapters.use_bit_dropout = bit_dropout
        lora_prompt.LOWER_STATES_BUDGET = lower_budget
        torch.optim.AdamW = adam
        mean_tokens = np.mean([len(s.ids) for s in seqs])
        for variant, values in times.items():
            print(f"{name}: {variant}: {', '.join(f'{v:.3f}' for v in values)} s per step, validating "
                  f"{', '.join(f'{v:.1f}' for v in validating[variant])} s "
                  f"(batch {settings.batch_size}, {mean_tokens:.1f} tokens per answer)")
        print(f"{name}: step speed-up {np.mean(times[ways[1]]) / np.mean(times[ways[0]]):.2f}x")


if __name__ == "__main__":
    main()
