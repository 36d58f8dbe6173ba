"""The cross-model study: every estimator model E on every answering model T.

``cell(E, T)`` is a method's estimator built on model E, fit on T's graded training
answers and evaluated on T's held-out graded answers. Model passes (answering and
feature extraction) are cached in the artifact store, so a rerun skips them.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from calibtune.answer import ClozeSettings, answer_multiple_choice, option_confidence
from calibtune.config import BASELINE_METHODS, MATRIX_METHODS, Selection, StudyConfig, dump_config
from calibtune.data import load_questions
from calibtune.errors import CalibtuneError
from calibtune.estimators.probe import ProbeEstimator
from calibtune.features import candidate_layers, extract_features, proposed_answer_text
from calibtune.grade import grade_multiple_choice
from calibtune.metrics import metrics_table
from calibtune.models import LoadedModel, cache_dir, choose_device, choose_dtype, load_model, model_fingerprint
from calibtune.records import Answer, Question, answers_from_table, answers_to_table
from calibtune.store import ArtifactStore, artifact_key

ANSWER_STAGE_VERSION = 1
FEATURE_STAGE_VERSION = 1

Log = Callable[[str], None]


def select_questions(selections: Sequence[Selection], seed: int, limit_per_set: int | None = None) -> list[Question]:
    """The questions a list of selections names, in order, with duplicates refused."""
    out: list[Question] = []
    seen: set[str] = set()
    for sel in selections:
        questions = load_questions(sel.dataset, split=sel.split, subjects=sel.subjects)
        chosen = questions[sel.start : sel.stop]
        if sel.sample is not None and sel.sample < len(chosen):
            chosen = random.Random(f"{seed}-{sel.dataset}-{sel.split}").sample(chosen, sel.sample)
        if limit_per_set is not None:
            chosen = chosen[:limit_per_set]
        if not chosen:
            raise CalibtuneError(f"selection {sel.dataset}:{sel.split} [{sel.start}:{sel.stop}] holds no questions")
        for question in chosen:
            if question.id in seen:
                raise CalibtuneError(f"question {question.id} is selected twice")
            seen.add(question.id)
        out.extend(chosen)
    return out


@dataclass
class StudyInputs:
    """The questions of a study, split into training and evaluation."""

    train: list[Question]
    eval: list[Question]

    @property
    def all(self) -> list[Question]:
        """Training then evaluation questions."""
        return self.train + self.eval


def study_questions(config: StudyConfig, quick: bool = False) -> StudyInputs:
    """Load the study's questions and check that no evaluation question is also trained on."""
    train = select_questions(config.train, config.seed, config.quick.train_per_set if quick else None)
    evaluation = select_questions(config.eval, config.seed, config.quick.eval_per_set if quick else None)
    overlap = {q.id for q in train} & {q.id for q in evaluation}
    if overlap:
        raise CalibtuneError(f"{len(overlap)} evaluation questions are also in the training set, "
                             f"e.g. {sorted(overlap)[0]}: make the train and eval selections disjoint")
    return StudyInputs(train, evaluation)


def _ids_digest(items: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(items).encode()).hexdigest()


@dataclass
class Study:
    """Runs a ``StudyConfig`` into a run folder."""

    config: StudyConfig
    output: Path
    quick: bool = False
    store: ArtifactStore = field(default_factory=lambda: ArtifactStore(cache_dir() / "store"))
    log: Log = print
    timings: dict[str, float] = field(default_factory=dict)

    def run(self) -> pd.DataFrame:
        """The whole study; returns the metrics table and writes the run folder."""
        cfg = self.config
        start = time.perf_counter()
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "config.yaml").write_text(dump_config(cfg))
        inputs = study_questions(cfg, self.quick)
        self.log(f"{len(inputs.train)} training and {len(inputs.eval)} evaluation questions, "
                 f"{len(cfg.models)} models")
        answers = {t: self._graded_answers(t, inputs) for t in cfg.models}
        scores = []
        if "option_confidence" in cfg.methods:
            scores.append(self._option_confidence(answers, inputs))
        if "probe" in cfg.methods:
            scores.append(self._probe_cells(answers, inputs))
        table = pd.concat(scores, ignore_index=True)
        table.to_parquet(self.output / "scores.parquet", index=False)
        metrics = metrics_table(table)
        self._write_metrics(metrics, answers, inputs)
        write_figures(self.output, cfg, metrics)
        self.timings["total"] = time.perf_counter() - start
        (self.output / "timings.json").write_text(json.dumps(self.timings, indent=2))
        return metrics

    # -- stages ---------------------------------------------------------------------------------

    def _load(self, name: str) -> LoadedModel:
        t0 = time.perf_counter()
        lm = load_model(name, dtype=self.config.dtype, device=self.config.device)
        self.timings[f"load {name}"] = self.timings.get(f"load {name}", 0.0) + time.perf_counter() - t0
        return lm

    def _cloze(self) -> ClozeSettings:
        cfg = self.config
        return ClozeSettings(prompt=cfg.prompt, option_prefix=cfg.option_prefix, select=cfg.select,
                             batch_size=cfg.batch_size)

    def _graded_answers(self, model: str, inputs: StudyInputs) -> dict[str, Answer]:
        """Model T's graded answers to every study question, by question id (cached)."""
        cloze = self._cloze()
        questions = inputs.all
        dtype = choose_dtype(self.config.dtype, choose_device(self.config.device))
        settings = {"model": model, "fingerprint": model_fingerprint(model), "dtype": str(dtype),
                    "prompt": cloze.prompt, "option_prefix": cloze.option_prefix, "select": cloze.select,
                    "questions": _ids_digest([q.id for q in questions])}
        key = artifact_key("answers", ANSWER_STAGE_VERSION, settings)
        if self.store.has("answers", key):
            self.log(f"answers of {model}: from the cache ({key[:12]})")
            graded = answers_from_table(self.store.get_table("answers", key))
        else:
            t0 = time.perf_counter()
            lm = self._load(model)
            graded = grade_multiple_choice(answer_multiple_choice(lm, questions, cloze), questions)
            self.timings[f"answer {model}"] = time.perf_counter() - t0
            self.store.put_table("answers", key, answers_to_table(graded), meta={"settings": settings})
            del lm
        by_id = {a.question_id: a for a in graded}
        acc_train = np.mean([by_id[q.id].correct for q in inputs.train])
        acc_eval = np.mean([by_id[q.id].correct for q in inputs.eval])
        self.log(f"{model}: accuracy {acc_train:.3f} on training questions, {acc_eval:.3f} on evaluation questions")
        return by_id

    def _features(self, lm: LoadedModel, texts: list[str], layers: list[int]) -> np.ndarray:
        """E's features for texts (cached per unique text set)."""
        cfg = self.config
        settings = {"model": lm.name, "fingerprint": model_fingerprint(lm.name), "dtype": str(lm.dtype),
                    "layers": layers, "token": cfg.features.token, "texts": _ids_digest(texts)}
        key = artifact_key("features", FEATURE_STAGE_VERSION, settings)
        if self.store.has("features", key):
            self.log(f"features of {lm.name}: from the cache ({key[:12]})")
            return self.store.get_arrays("features", key)["features"]
        t0 = time.perf_counter()
        feats = extract_features(lm, texts, layers, token=cfg.features.token, batch_size=cfg.batch_size)
        self.timings[f"features {lm.name}"] = self.timings.get(f"features {lm.name}", 0.0) + time.perf_counter() - t0
        self.store.put_arrays("features", key, {"features": feats}, meta={"settings": settings})
        return feats

    def _texts(self, answers: dict[str, Answer], questions: Sequence[Question]) -> list[str]:
        cfg = self.config
        return [proposed_answer_text(q, answers[q.id].text, cfg.prompt, cfg.option_prefix) for q in questions]

    def _option_confidence(self, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> pd.DataFrame:
        rows = []
        for t, by_id in answers.items():
            for q in inputs.eval:
                a = by_id[q.id]
                rows.append({"method": "option_confidence", "model": t, "trained_on": t, "evaluated_on": t,
                             "question_id": q.id, "dataset": q.dataset,
                             "p_correct": option_confidence(a, self.config.select), "label": int(a.correct)})
        return pd.DataFrame(rows)

    def _probe_cells(self, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> pd.DataFrame:
        cfg = self.config
        rows = []
        for e in cfg.models:
            lm = self._load(e)
            layers = candidate_layers(lm.num_layers, cfg.features.layers)
            # One pass over the unique texts of all answering models: T's often share answers.
            texts = {t: (self._texts(by_id, inputs.train), self._texts(by_id, inputs.eval))
                     for t, by_id in answers.items()}
            unique = sorted({x for tr, ev in texts.values() for x in tr + ev})
            feats = self._features(lm, unique, layers)
            index = {x: i for i, x in enumerate(unique)}
            for t, (train_texts, eval_texts) in texts.items():
                y_train = np.array([answers[t][q.id].correct for q in inputs.train], dtype=np.int64)
                y_eval = np.array([answers[t][q.id].correct for q in inputs.eval], dtype=np.int64)
                meta = {"estimator_model": e, "trained_on": t, "prompt": cfg.prompt, "option_prefix": cfg.option_prefix,
                        "token": cfg.features.token, "n_train": len(y_train), "seed": cfg.seed}
                t0 = time.perf_counter()
                probe = ProbeEstimator(cfg.probe.to_config(cfg.seed), layers=tuple(layers), meta=meta)
                probe.fit(feats[[index[x] for x in train_texts]], y_train)
                self.timings[f"fit probe {e} on {t}"] = time.perf_counter() - t0
                probe.save(self.output / "estimators" / "probe" / f"{_slug(e)}__on__{_slug(t)}")
                p = probe.predict_proba(feats[[index[x] for x in eval_texts]])
                self.log(f"probe {e} on {t}: layer {probe.layer} "
                         f"(validation AUROC by layer {_fmt_scores(probe.layer_scores)})")
                for q, pi, yi in zip(inputs.eval, p, y_eval):
                    rows.append({"method": "probe", "model": e, "trained_on": t, "evaluated_on": t,
                                 "question_id": q.id, "dataset": q.dataset, "p_correct": float(pi), "label": int(yi)})
            del lm
        return pd.DataFrame(rows)

    # -- outputs --------------------------------------------------------------------------------

    def _write_metrics(self, metrics: pd.DataFrame, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> None:
        metrics.to_csv(self.output / "metrics.csv", index=False)
        records = json.loads(metrics.to_json(orient="records"))
        accuracy = {t: {"train": float(np.mean([a[q.id].correct for q in inputs.train])),
                        "eval": float(np.mean([a[q.id].correct for q in inputs.eval]))} for t, a in answers.items()}
        payload = {"cells": records, "answer_accuracy": accuracy,
                   "n_train": len(inputs.train), "n_eval": len(inputs.eval)}
        (self.output / "metrics.json").write_text(json.dumps(payload, indent=2))



def write_figures(output: Path, config: StudyConfig, metrics: pd.DataFrame) -> None:
    """Draw the heatmap and write report.html in a run folder, from its metrics alone."""
    from calibtune.report.heatmap import plot_heatmap
    from calibtune.report.html import write_report

    matrix = [m for m in MATRIX_METHODS if m in config.methods]
    baselines = [m for m in BASELINE_METHODS if m in config.methods]
    order = {name: i for i, name in enumerate(config.models)}
    ordered = metrics.sort_values(["model", "trained_on"], key=lambda col: col.map(order))
    if matrix or baselines:
        plot_heatmap(ordered, output / "heatmap.png", matrix_methods=matrix or baselines,
                     baseline_methods=baselines if matrix else ())
    write_report(output)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name.strip("/").split("/")[-1])


def _fmt_scores(scores: dict[int, float]) -> str:
    return ", ".join(f"{k}: {v:.3f}" for k, v in scores.items())
