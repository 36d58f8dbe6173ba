"""Every model pass of calibtune against this machine's limit and against the naive way, in one run.

    .venv/bin/python benchmarks/run.py [--quick] [--models smollm2-135m gemma3-270m] [--json out.json]

For each bundled model and pass (cloze scoring, feature extraction, open-ended generation,
LoRA + Prompt training, LoRA training) it prints: tokens/s, questions or examples/s, peak
memory, model FLOP utilisation (the FLOPs the pass needs, counted by ``calibtune.costs``
from the model's shape, per second, over the matmul FLOP/s measured here in the same run
for the same dtype) and the speed-up over the naive implementation (``benchmarks/naive.py``:
fp32, one question at a time, the head everywhere) timed in the same run. Cloze scoring is
also timed with the key/value-cache path calibtune 0.1 used, for the shared-prefix
comparison. Without ``--quick`` it adds how answering time scales with the number of
questions, and a fully cached rerun of the quick study. The table is also written as JSON,
so that two commits can be compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
import naive  # noqa: E402
import reference_v01  # noqa: E402
from peak import matmul_peak  # noqa: E402
from plan_check import plan_against_run  # noqa: E402

from calibtune.answer import ClozeSettings, cloze_answers  # noqa: E402
from calibtune.bundled import BUNDLED  # noqa: E402
from calibtune.config import load_config  # noqa: E402
from calibtune.costs import ModelShape, sequence_flops, training_flops, tree_flops  # noqa: E402
from calibtune.data import load_questions  # noqa: E402
from calibtune.features import answer_trees, candidate_layers, extract_features  # noqa: E402
from calibtune.generate import GenerationSettings, encode_prompts, generate_answers  # noqa: E402
from calibtune.models import choose_dtype, load_model  # noqa: E402
from calibtune.plan import machine_rate, save_benchmark_record  # noqa: E402
from calibtune.prompts import DEFAULT_QUERY, format_prompt  # noqa: E402

SIZES = {"quick": {"cloze": 96, "naive_cloze": 6, "features": 96, "naive_features": 6, "generate": 32,
                   "naive_generate": 4, "train_steps": 6, "naive_steps": 3},
         "full": {"cloze": 400, "naive_cloze": 24, "features": 400, "naive_features": 24, "generate": 128,
                  "naive_generate": 12, "train_steps": 24, "naive_steps": 8}}


class PeakMemory:
    """Peak resident memory above the level at entry (CPU), or peak allocated CUDA memory."""

    def __enter__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.process, self.stop = psutil.Process(), False
            self.base = self.peak = self.process.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.cuda:
            self.gib = (torch.cuda.max_memory_allocated() - self.base) / 2**30
        else:
            self.stop = True
            self.thread.join()
            self.gib = (self.peak - self.base) / 2**30


def timed(fn):
    """Run ``fn`` once; (result, seconds, peak GiB)."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, memory.gib


def row(model: str, name: str, seconds: float, items: int, unit: str, tokens: float, flops: float, peak: float,
        memory: float, naive_rate: float | None, extra: dict | None = None) -> dict:
    out = {"model": model, "pass": name, "seconds": seconds, unit: items, f"{unit}_per_s": items / seconds,
           "tokens_per_s": tokens / seconds, "flops": flops, "mfu": flops / seconds / peak,
           "peak_memory_gib": memory, "speedup_vs_naive": (items / seconds) / naive_rate if naive_rate else None}
    return {**out, **(extra or {})}


def bench_model(name: str, sizes: dict, peak: float) -> list[dict]:
    lm = load_model(name)
    shape = ModelShape.of(lm.model.config)
    fp32 = load_model(name, dtype="float32", fused_norms=False)  # the naive way: transformers as it comes
    rows = []
    questions = load_questions("arc_easy", split="test")
    cloze_q = questions[: sizes["cloze"]]
    settings = ClozeSettings()
    prompts = [format_prompt(q) for q in cloze_q]
    options = [[" " + c for c in q.choices] for q in cloze_q]
    ctx_ids = lm.tokenizer(prompts)["input_ids"]
    opt_ids = [lm.tokenizer(o, add_special_tokens=False)["input_ids"] for o in options]
    cloze_answers(lm, cloze_q[:8], settings, progress=lambda n: None)  # warm-up
    (answers, _), seconds, memory = timed(lambda: cloze_answers(lm, cloze_q, settings, progress=lambda n: None))
    flops = sum(tree_flops(shape, len(c), [len(o) for o in opts]) for c, opts in zip(ctx_ids, opt_ids))
    tokens = sum(len(c) + sum(len(o) for o in opts) for c, opts in zip(ctx_ids, opt_ids))
    k = sizes["naive_cloze"]
    naive_scores, naive_s, _ = timed(lambda: naive.cloze(fp32, prompts[:k], options[:k]))
    ours = [np.array(a.option_logprob_sum) for a in answers[:k]]
    agree = np.mean([int(np.argmax(a / [len(x) for x in o]) == np.argmax(b / [len(x) for x in o]))
                     for a, b, o in zip(ours, naive_scores, opt_ids[:k])])
    _, v01_s, _ = timed(lambda: reference_v01.option_logprobs(lm, ctx_ids, opt_ids, batch_size=16))
    rows.append(row(name, "cloze scoring", seconds, len(cloze_q), "questions", tokens, flops, peak, memory,
                    k / naive_s, {"v01_questions_per_s": len(cloze_q) / v01_s,
                                  "speedup_vs_v01": v01_s / seconds, "naive_choice_agreement": agree,
                                  "max_abs_logprob_diff_vs_naive": float(max(np.abs(a - b).max()
                                                                             for a, b in zip(ours, naive_scores)))}))

    layers = candidate_layers(lm.num_layers)
    feat_q = questions[: sizes["features"]]
    f_prompts = [format_prompt(q) for q in feat_q]
    f_answers = [" " + q.choices[q.gold] for q in feat_q]
    trees = answer_trees(lm, f_prompts, f_answers)
    feats, seconds, memory = timed(lambda: extract_features(lm, f_prompts, f_answers, layers, progress=lambda n: None))
    lengths = [len(t.context) + len(t.branches[0]) for t in trees]
    k = sizes["naive_features"]
    naive_feats, naive_s, _ = timed(lambda: naive.features(fp32, f_prompts[:k], f_answers[:k], layers))
    rel = float(np.abs(feats[:k] - naive_feats).max() / np.abs(naive_feats).max())
    rows.append(row(name, "feature extraction", seconds, len(feat_q), "texts", sum(lengths),
                    sum(sequence_flops(shape, n) for n in lengths), peak, memory, k / naive_s,
                    {"max_rel_diff_vs_naive": rel}))

    trivia = load_questions("trivia_qa")[: sizes["generate"]]
    g_prompts = [format_prompt(q) for q in trivia]
    ids = encode_prompts(lm, g_prompts)
    gen = GenerationSettings(max_new_tokens=16, batch_size=32, stop="")
    generated, seconds, memory = timed(lambda: generate_answers(lm, ids, gen))
    n_new = [len(g.token_ids) for g in generated]
    flops = sum(sequence_flops(shape, len(p)) + sum(shape.token_flops(len(p) + j + 1) + shape.head_flops
                                                   for j in range(m)) for p, m in zip(ids, n_new))
    k = sizes["naive_generate"]
    _, naive_s, _ = timed(lambda: naive.generate(fp32, g_prompts[:k], 16))
    rows.append(row(name, "generation", seconds, len(trivia), "questions", sum(n_new), flops, peak, memory,
                    k / naive_s))

    rows.extend(bench_training(name, lm, fp32, shape, questions, sizes, peak))
    return rows


def bench_training(name, lm, fp32, shape, questions, sizes, peak) -> list[dict]:
    from calibtune.estimators.lora_head import LoraHeadEstimator
    from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
    from calibtune.estimators.query import option_token_ids
    from calibtune.features import answer_sequences

    study = load_config(None)
    steps = sizes["train_steps"]
    rows = []
    rng = np.random.default_rng(0)
    # as many questions as the steps take, and the validation share that training holds out
    batch = max(study.lora_prompt.batch_size, study.lora.batch_size)
    pool = questions[1000:1000 + math.ceil(steps * batch / (1 - study.lora_prompt.val_fraction))]
    labels = rng.integers(0, 2, len(pool))
    prompts = [format_prompt(q) for q in pool]
    answers = [" " + q.choices[q.gold if y else (q.gold + 1) % len(q.choices)] for q, y in zip(pool, labels)]

    cfg = study.lora_prompt.model_copy(update={"max_steps": steps, "eval_every": 10**6, "epochs": 100.0,
                                               "max_train_examples": None})
    seqs = encode_queries(lm.tokenizer, prompts, answers, cfg.query)
    est = LoraPromptEstimator(lm, cfg)
    _, _, memory = timed(lambda: est.fit(seqs, labels))
    est.release()
    seconds = est.log.step_seconds
    seen = [seqs[i] for i in range(len(seqs))][: steps * cfg.batch_size]
    forward = sum(sequence_flops(shape, len(s.ids)) + (s.answer[1] - s.answer[0]) * shape.head_flops for s in seen)
    tokens = sum(len(s.ids) for s in seen)
    k = sizes["naive_steps"]
    fp32_seqs = encode_queries(fp32.tokenizer, prompts, answers, cfg.query)
    tokens_ids = option_token_ids(fp32.tokenizer, DEFAULT_QUERY, cfg.options)
    _, naive_s, _ = timed(lambda: naive.train_lora_prompt(fp32, fp32_seqs, labels, tokens_ids, k))
    rows.append(row(name, "LoRA + Prompt training", seconds, steps * cfg.batch_size, "examples", tokens,
                    training_flops(forward), peak, memory, k / naive_s,
                    {"batch_size": cfg.batch_size, "layers": cfg.layers}))

    head_cfg = study.lora.model_copy(update={"max_steps": steps, "eval_every": 10**6, "epochs": 100.0,
                                             "max_train_examples": None})
    h_seqs = answer_sequences(lm, prompts, answers)
    est = LoraHeadEstimator(lm, head_cfg)
    _, _, memory = timed(lambda: est.fit(h_seqs, labels))
    layer = est.layer
    est.release()
    seconds = est.log.step_seconds
    seen = h_seqs[: steps * head_cfg.batch_size]
    forward = sum(sequence_flops(shape, len(s.ids), layers=layer) for s in seen)
    _, naive_s, _ = timed(lambda: naive.train_lora_head(fp32, answer_sequences(fp32, prompts, answers), labels,
                                                       layer, k))
    rows.append(row(name, "LoRA training", seconds, steps * head_cfg.batch_size, "examples",
                    sum(len(s.ids) for s in seen), training_flops(forward), peak, memory, k / naive_s,
                    {"batch_size": head_cfg.batch_size, "layer": layer}))
    return rows


def scaling(name: str) -> list[dict]:
    """Answering time at three sizes: seconds per question should not grow with the number of questions."""
    lm = load_model(name)
    questions = load_questions("arc_easy", split="test")
    out = []
    for n in (100, 200, 400):
        _, seconds, _ = timed(lambda n=n: cloze_answers(lm, questions[:n], ClozeSettings(), progress=lambda k: None))
        out.append({"model": name, "questions": n, "seconds": seconds, "ms_per_question": 1000 * seconds / n})
    return out


def cached_rerun() -> dict:
    """The quick study twice on one store: the second run takes everything from the cache and loads no model.
    The first run's stage times are set against the dry run's estimates for this CPU (``plan_check.py``)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CALIBTUNE_CACHE": tmp}
        models = Path(os.environ.get("CALIBTUNE_CACHE") or Path.home() / ".cache" / "calibtune") / "models"
        if models.is_dir():
            os.symlink(models, Path(tmp) / "models")
        times = []
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "calibtune", "run", "--quick", "-o", str(Path(tmp) / "run")],
                           env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
            if len(times) == 1:
                timings = json.loads((Path(tmp) / "run" / "timings.json").read_text())
    config = load_config(None)
    return {"first_run_s": times[0], "cached_rerun_s": times[1],
            "plan": plan_against_run(config, True, timings, machine_rate(config.dtype))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: under five minutes on 2 CPU cores")
    parser.add_argument("--models", nargs="*", default=list(BUNDLED))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    args = parser.parse_args()
    sizes = SIZES["quick" if args.quick else "full"]
    dtype = choose_dtype("auto")
    peak = matmul_peak(dtype)
    peak32 = peak if dtype == torch.float32 else matmul_peak(torch.float32)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "dtype": str(dtype), "matmul_flops": peak, "matmul_flops_fp32": peak32}
    where = machine["cuda"] or f"CPU ({machine['cpu']}), {machine['threads']} threads"
    print(f"commit {commit}; {where}; {dtype}; measured matmul {peak / 1e9:.0f} GFLOP/s ({peak32 / 1e9:.0f} in fp32)")
    rows = [r for name in args.models for r in bench_model(name, sizes, peak)]
    header = f"{'model':14} {'pass':24} {'items/s':>9} {'tokens/s':>9} {'MFU':>6} {'vs naive':>9} {'peak GiB':>9}"
    print(header)
    for r in rows:
        rate = next(v for k, v in r.items() if k.endswith("_per_s") and k != "tokens_per_s")
        print(f"{r['model']:14} {r['pass']:24} {rate:9.1f} {r['tokens_per_s']:9.0f} {100 * r['mfu']:5.1f}% "
              f"{r['speedup_vs_naive']:8.1f}x {r['peak_memory_gib']:9.2f}")
    for r in rows:
        if "speedup_vs_v01" in r:
            print(f"{r['model']}: shared-prefix cloze {r['questions_per_s']:.1f} questions/s against "
                  f"{r['v01_questions_per_s']:.1f} with calibtune 0.1's key/value-cache path "
                  f"({r['speedup_vs_v01']:.2f}x); same choice as the fp32 naive scores on "
                  f"{100 * r['naive_choice_agreement']:.0f}% of {sizes['naive_cloze']} questions")
    result = {"commit": commit, "quick": args.quick, "machine": machine, "rows": rows}
    if not machine["cuda"]:  # before the cached rerun below, whose plan is checked against these rates
        print(f"rates for the dry run written to {save_benchmark_record(str(dtype), peak, rows, commit)}")
    if not args.quick:
        result["scaling"] = [s for name in args.models for s in scaling(name)]
        for s in result["scaling"]:
            print(f"scaling {s['model']}: {s['questions']} questions in {s['seconds']:.1f} s "
                  f"({s['ms_per_question']:.1f} ms each)")
        result["cached"] = cached_rerun()
        print(f"quick study: first run {result['cached']['first_run_s']:.0f} s, fully cached rerun "
              f"{result['cached']['cached_rerun_s']:.1f} s")
        for p in result["cached"]["plan"]:
            print(f"dry run against the quick study: {p['stage']} {p['model']}: estimated {p['estimated_s']:.0f} s, "
                  f"measured {p['measured_s']:.0f} s")
        estimated = sum(p["estimated_s"] for p in result["cached"]["plan"])
        measured = sum(p["measured_s"] for p in result["cached"]["plan"])
        print(f"dry run against the quick study, all stages: estimated {estimated:.0f} s, measured {measured:.0f} s "
              f"(measured / estimated {measured / estimated:.2f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
