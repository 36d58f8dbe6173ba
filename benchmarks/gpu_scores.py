"""The CUDA paths against the CPU on the same weights and questions (run where a GPU is lent).

    python benchmarks/gpu_scores.py [--models smollm2-135m gemma3-270m] [--questions 150] [--json out.json]

For each model: how it loads on CUDA (dtype, device, attention implementation); cloze scores
of ARC-Easy test questions and the Probe's features (the middle layer, last answer token)
on CUDA in fp32 against the CPU in fp32 (the largest difference, and how often the chosen
answers agree), and on CUDA in bf16 (the study's default there) against the CPU in fp32; the
same CUDA bf16 scores with a token budget of 2,048 and of 16,384 tokens per pass (batches
of other shapes); and LoRA + Prompt trained 4 steps (dropout off) on CUDA in fp32 against
the CPU in fp32: the training losses and the held-out P(correct).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from calibtune.answer import ClozeSettings, cloze_answers
from calibtune.config import load_config
from calibtune.data import load_questions
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
from calibtune.features import extract_features
from calibtune.models import load_model
from calibtune.prompts import format_prompt


def scores(lm, questions, budget: int = 8192) -> np.ndarray:
    """Per-token option log-likelihoods of every question (padded with -inf to the most options)."""
    answers, _ = cloze_answers(lm, questions, ClozeSettings(token_budget=budget), progress=lambda n: None)
    width = max(len(a.option_logprob_mean) for a in answers)
    out = np.full((len(answers), width), -np.inf)
    for i, a in enumerate(answers):
        out[i, : len(a.option_logprob_mean)] = a.option_logprob_mean
    return out


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Largest absolute difference and agreement of the argmax rows of two score arrays."""
    finite = np.isfinite(a) & np.isfinite(b)
    return {"max_abs_diff": float(np.abs(a[finite] - b[finite]).max()),
            "choice_agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}


def train(lm, questions, labels) -> tuple[list[float], np.ndarray]:
    """Train LoRA + Prompt 4 steps without dropout; its training losses and held-out P(correct)."""
    cfg = load_config(None).lora_prompt.model_copy(update={"max_steps": 4, "eval_every": 10**6, "epochs": 100.0,
                                                          "dropout": 0.0, "max_train_examples": None})
    prompts = [format_prompt(q) for q in questions]
    answers = [" " + q.choices[q.gold if y else (q.gold + 1) % len(q.choices)] for q, y in zip(questions, labels)]
    seqs = encode_queries(lm.tokenizer, prompts, answers, cfg.query)
    torch.manual_seed(0)
    est = LoraPromptEstimator(lm, cfg)
    est.fit(seqs[:48], labels[:48])
    p = est.predict_proba(seqs[48:])
    losses = list(est.log.train_loss)
    est.release()
    return losses, p


def check(name: str, n: int, device: str = "cuda") -> dict:
    """Every comparison of the module docstring for one model."""
    cpu = load_model(name, dtype="float32", device="cpu")
    gpu32 = load_model(name, dtype="float32", device=device)
    gpu = load_model(name, device=device)  # auto: bf16 on CUDA
    out = {"model": name, "cuda_auto": {"dtype": str(gpu.dtype), "device": str(gpu.device),
                                        "attention": gpu.model.config._attn_implementation}}
    print(f"{name}: device auto loads on {gpu.device} in {gpu.dtype}, attention {out['cuda_auto']['attention']}")
    questions = load_questions("arc_easy", split="test")[:n]
    s_cpu, s_gpu32, s_gpu = scores(cpu, questions), scores(gpu32, questions), scores(gpu, questions)
    out["cloze_cuda_fp32_vs_cpu_fp32"] = compare(s_gpu32, s_cpu)
    out["cloze_cuda_bf16_vs_cpu_fp32"] = compare(s_gpu, s_cpu)
    out["cloze_cuda_bf16_budget_2048_vs_16384"] = compare(scores(gpu, questions, 2048), scores(gpu, questions, 16384))
    for key in ("cloze_cuda_fp32_vs_cpu_fp32", "cloze_cuda_bf16_vs_cpu_fp32", "cloze_cuda_bf16_budget_2048_vs_16384"):
        r = out[key]
        print(f"  {key}: max |diff| {r['max_abs_diff']:.2e} nats/token, same choice on "
              f"{100 * r['choice_agreement']:.1f}% of {n}")
    prompts = [format_prompt(q) for q in questions]
    answers = [" " + q.choices[q.gold] for q in questions]
    layer = [cpu.num_layers // 2]
    f_cpu, f_gpu32 = (extract_features(m, prompts, answers, layer, progress=lambda k: None) for m in (cpu, gpu32))
    f_gpu = extract_features(gpu, prompts, answers, layer, progress=lambda k: None)
    scale = float(np.abs(f_cpu).max())
    out["features_rel_diff_cuda_fp32"] = float(np.abs(f_gpu32 - f_cpu).max() / scale)
    out["features_rel_diff_cuda_bf16"] = float(np.abs(f_gpu - f_cpu).max() / scale)
    print(f"  features at layer {layer[0]}: max |diff| / max |value|: "
          f"CUDA fp32 {out['features_rel_diff_cuda_fp32']:.2e}, CUDA bf16 {out['features_rel_diff_cuda_bf16']:.2e}")
    labels = np.random.default_rng(0).integers(0, 2, len(questions))
    (l_cpu, p_cpu), (l_gpu, p_gpu) = train(cpu, questions, labels), train(gpu32, questions, labels)
    out["lora_prompt_losses"] = {"cpu_fp32": l_cpu, "cuda_fp32": l_gpu}
    out["lora_prompt_p_max_abs_diff"] = float(np.abs(p_cpu - p_gpu).max())
    print(f"  LoRA + Prompt, 4 steps in fp32: losses CPU {np.round(l_cpu, 5).tolist()} "
          f"CUDA {np.round(l_gpu, 5).tolist()};\n    held-out P(correct) max |diff| "
          f"{out['lora_prompt_p_max_abs_diff']:.2e} over {len(p_cpu)}")
    del cpu, gpu32, gpu
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--questions", type=int, default=150)
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to try the script where no GPU is")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = []
    for name in args.models:
        results.append(check(name, args.questions, args.device))
        if args.json:  # after each model, so that a run cut short keeps what it measured
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
