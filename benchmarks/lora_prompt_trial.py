"""The recorded trial behind LoRA + Prompt's default settings: each variant trained on the same answers, scored
on the same held-out questions.

    .venv/bin/python benchmarks/lora_prompt_trial.py E T VARIANTS.json [--train N] [--out results.jsonl]

E is the estimator model, T the answering model; answers come from (and go to) the artifact store,
so run a study with the same questions first. VARIANTS.json is a list of objects, each a set of
LoRA + Prompt settings over the default study's (e.g. ``{"learning_rate": 0.001, "kl_weight": 0.1}``;
``"readout_layer": "auto"`` trains the mid-layer read-out; ``"seed": 1`` changes only the estimator's seed: its
validation split, adapter initialisation and batch order). For each variant it prints and appends one
JSON line: the settings, the evaluation AUROC with its 95% bootstrap interval and its paired difference
from the Probe's on the same answers (1,000 paired resamples, seeded as the study's), ECE before and after the
temperature scaling the study does (fitted on the kept adapters' held-out P(correct)), the validation-loss
curve, the step kept and the training time. With ``--trace`` it also scores the evaluation answers at every
validation (and at step 0), so the line says how the estimator's AUROC moves along the training trajectory
and which step other selection rules (the held-out answers' AUROC, or their loss after Platt scaling) would
have kept; that costs one more pass over the evaluation answers per validation. Its ``kept_by`` says, for each
``keep`` rule with the default study's patience, which step it would keep and that step's evaluation AUROC (run
the variant with ``"patience": 99`` so the trajectory goes on past every rule's stop). The default study's
evaluation questions are the held-out set; its training questions (or a seeded sample of ``--train`` of
them) are trained on.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from scipy.special import expit

from calibtune import metrics
from calibtune.bootstrap import bootstrap_intervals, paired_bootstrap
from calibtune.bundled import cache_dir
from calibtune.calibration import TemperatureScaler
from calibtune.config import load_config
from calibtune.estimator_settings import LoraPromptConfig
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
from calibtune.features import extract_features
from calibtune.models import load_model
from calibtune.prompts import format_prompt
from calibtune.questions import study_questions
from calibtune.stages.answers import graded_answers
from calibtune.stages.base import Runtime
from calibtune.store import ArtifactStore
from calibtune.study import ModelPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("estimator")
    parser.add_argument("answering")
    parser.add_argument("variants", type=Path)
    parser.add_argument("--config", type=Path, default=None, help="study config (default: the default study)")
    parser.add_argument("--train", type=int, default=None, help="a seeded sample of this many training answers")
    parser.add_argument("--estimator-prompt", default=None,
                        help="the template of the estimator's text (default: the config's prompt, which answered)")
    parser.add_argument("--trace", action="store_true",
                        help="score the evaluation answers at every validation (AUROC along the trajectory)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/lora_prompt_trial.jsonl"))
    args = parser.parse_args()
    cfg = load_config(args.config)
    timings: dict[str, float] = {}
    rt = Runtime(ArtifactStore(cache_dir() / "store"), print, ModelPool(cfg.dtype, cfg.device, timings), timings)
    inputs = study_questions(cfg)
    answers = graded_answers(rt, cfg, inputs, args.answering, None)
    train = list(inputs.train)
    if args.train and args.train < len(train):
        train = random.Random(f"{cfg.seed}-trial").sample(train, args.train)
    lm = load_model(args.estimator, dtype=cfg.dtype)

    def prompts(questions):
        template = args.estimator_prompt or cfg.prompt
        return ([format_prompt(q, template) for q in questions],
                [cfg.option_prefix + answers[q.id].text for q in questions])

    y_train = np.array([answers[q.id].label for q in train])
    y_eval = np.array([answers[q.id].label for q in inputs.eval])
    # the Probe on the same answers: the bar to reach, and the layer that readout_layer "auto" reads
    from calibtune.estimator_settings import ProbeConfig
    from calibtune.estimators.probe import ProbeEstimator
    from calibtune.features import candidate_layers

    layers = candidate_layers(lm.num_layers)
    start = time.perf_counter()
    probe = ProbeEstimator(ProbeConfig(), layers=tuple(layers), seed=cfg.seed).fit(
        extract_features(lm, *prompts(train), layers), y_train)
    p_probe = probe.predict_proba(extract_features(lm, *prompts(inputs.eval), layers))[:, 1]
    probe_layer = probe.layer_
    shown = {"estimator_prompt": args.estimator_prompt} if args.estimator_prompt else {}
    record(args, {"method": "probe", "layer": probe_layer, **shown}, p_probe, y_eval, cfg.seed, len(train),
           {"fit_s": round(time.perf_counter() - start)})
    for variant in json.loads(args.variants.read_text()):
        readout = variant.pop("readout_layer", None)
        seed = variant.pop("seed", cfg.seed)
        settings = LoraPromptConfig.model_validate({**cfg.lora_prompt.model_dump(), "max_train_examples": None,
                                                    **variant})
        if readout == "auto":
            readout = probe_layer
        seqs = encode_queries(lm.tokenizer, *prompts(train), settings.query)
        eval_seqs = encode_queries(lm.tokenizer, *prompts(inputs.eval), settings.query)
        est = LoraPromptEstimator(lm, settings, seed=seed, readout=readout)
        trace: list[dict] = []
        start = time.perf_counter()
        with traced(est, seqs, y_train, eval_seqs, y_eval, trace) if args.trace else nullcontext():
            est.fit(seqs, y_train, groups=[q.dataset for q in train])
        fit_s = time.perf_counter() - start
        p = est.predict_proba(eval_seqs)
        est.release()
        diff = paired_bootstrap(p, p_probe, y_eval, ["auroc"], n_resamples=1000, seed=cfg.seed)["auroc"]
        # the study's temperature scaling: fitted on the kept adapters' P(correct) of the held-out training answers
        scaler = TemperatureScaler.fit(expit(est.val_logits), y_train[est.val_indices])
        extra = {"fit_s": round(fit_s), "steps": est.log.steps, "best_step": est.log.best_step,
                 "ece_ts": round(metrics.ece(scaler.transform(p), y_eval), 4),
                 "auroc_minus_probe": [round(v, 4) for v in diff],
                 "val_loss": [(s, round(v, 4)) for s, v in est.log.val_loss]}
        if args.trace:
            extra["trace"] = [{"step": s, **t} for (s, _), t in zip(est.log.val_loss, trace)]
            extra["kept_by"] = kept_by_rule(extra["trace"], cfg.lora_prompt.patience)
        record(args, {**variant, "readout_layer": readout, "seed": seed, **shown}, p, y_eval, cfg.seed, len(train),
               extra)


@contextmanager
def traced(est: LoraPromptEstimator, seqs, y_train: np.ndarray, eval_seqs, y_eval: np.ndarray, trace: list[dict]):
    """While ``est`` trains, each validation also appends to ``trace`` the held-out answers' figure for every
    ``keep`` rule (their loss, their loss after Platt scaling fitted on them, their AUROC: each as training computes
    it, whatever rule this run keeps by), and the evaluation answers' AUROC and ECE after the temperature fitted on
    the held-out answers. The held-out answers' logits are caught from the validation pass itself."""
    from calibtune.estimators import lora_prompt
    from calibtune.estimators.adapters import held_out_score
    from calibtune.estimators.query import yes_logit

    caught: dict[int, float] = {}
    real_logits, real_loop = lora_prompt.query_logits, lora_prompt.train_loop

    def catching_logits(lm, batch, *rest):
        logits = real_logits(lm, batch, *rest)
        caught.update(zip(map(id, batch), yes_logit(logits)))
        return logits

    def entry(z_val: np.ndarray, y_val: np.ndarray, w_val: np.ndarray) -> dict:
        est.lm.model.eval()
        p_eval = lora_prompt.query_p_correct(est.lm, eval_seqs, est.token_ids, est.config.batch_size * 2,
                                             "trace: evaluation answers", est.readout)
        est.lm.model.train()
        p_val = expit(z_val)
        return {"val_loss": round(held_out_score("loss", z_val, y_val, w_val), 4),
                "val_auroc": round(1 - held_out_score("auroc", z_val, y_val, w_val), 4),
                "val_platt_nll": round(held_out_score("calibrated_loss", z_val, y_val, w_val), 4),
                "eval_auroc": round(metrics.auroc(p_eval, y_eval), 4),
                "eval_ece_ts": round(metrics.ece(TemperatureScaler.fit(p_val, y_val).transform(p_eval), y_eval), 4)}

    def tracing_loop(params, n_train, step_loss, val_loss, *rest, **options):
        val_seqs = [seqs[i] for i in est.val_indices]
        y_val = y_train[est.val_indices]

        def validate() -> float:
            caught.clear()
            figure = val_loss()  # by the rule this run keeps by; the trace holds every rule's
            trace.append(entry(np.array([caught[id(s)] for s in val_seqs]), y_val, est.val_weights))
            # printed as it comes, so a trace cut short still says how far it got
            print(json.dumps({"validation": len(trace) - 1, "criterion": round(figure, 4), **trace[-1]}), flush=True)
            return figure

        validate()  # step 0: the adapters start at zero, so this is the base model
        return real_loop(params, n_train, step_loss, validate, *rest, **options)

    lora_prompt.query_logits, lora_prompt.train_loop = catching_logits, tracing_loop
    try:
        yield
    finally:
        lora_prompt.query_logits, lora_prompt.train_loop = real_logits, real_loop


RULE_FIGURES = {"loss": lambda t: t["val_loss"], "calibrated_loss": lambda t: t["val_platt_nll"],
                "auroc": lambda t: 1 - t["val_auroc"]}


def kept_by_rule(trace: list[dict], patience: int) -> dict[str, dict]:
    """For each ``keep`` rule, the step that training with ``patience`` would have kept on this traced trajectory,
    and that step's evaluation AUROC and ECE after temperature scaling. One traced run answers for every rule
    because the trajectory does not depend on the rule, only where training stops does; so the run must go on
    at least as far as the rule would (a larger patience, e.g. 99). ``last`` is the last step traced."""
    out = {}
    for rule, figure in RULE_FIGURES.items():
        best, since = 0, 0
        for i in range(1, len(trace)):
            if figure(trace[i]) < figure(trace[best]) - 1e-4:
                best, since = i, 0
            else:
                since += 1
                if since >= patience:
                    break
        out[rule] = trace[best]
    out["last"] = trace[-1]
    return {rule: {k: t[k] for k in ("step", "eval_auroc", "eval_ece_ts")} for rule, t in out.items()}


def record(args, variant: dict, p: np.ndarray, y: np.ndarray, seed: int, n_train: int, extra: dict) -> None:
    """Print one trial line (AUROC with its 95% interval, ECE before temperature scaling) and append it."""
    metrics = bootstrap_intervals(p, y, ["auroc", "ece"], n_resamples=1000, seed=seed)
    line = {"estimator": args.estimator, "answering": args.answering, "n_train": n_train, "variant": variant,
            "auroc": [round(v, 4) for v in metrics["auroc"]], "ece": round(metrics["ece"][0], 4),
            "distinct_p": int(len(np.unique(p))), **extra}
    print(json.dumps(line), flush=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
