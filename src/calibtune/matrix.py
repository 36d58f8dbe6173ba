"""The cross-model study: every estimator model E on every answering model T.

``cell(E, T)`` is a method's estimator built on model E, fit on T's graded training
answers and evaluated on T's held-out graded answers. Model passes (answering and
feature extraction) are cached in the artifact store, so a rerun skips them.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from calibtune.answer import ClozeSettings, answer_multiple_choice, format_prompt, option_confidence
from calibtune.calibration import TemperatureScaler
from calibtune.config import BASELINE_METHODS, MATRIX_METHODS, Selection, StudyConfig, dump_config
from calibtune.data import load_questions
from calibtune.errors import CalibtuneError
from calibtune.estimators.lora_head import LoraHeadEstimator
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries, query_p_correct
from calibtune.estimators.probe import ProbeEstimator
from calibtune.estimators.query import option_token_ids
from calibtune.features import candidate_layers, extract_features, proposed_answer_text
from calibtune.forward import encode_texts
from calibtune.generate import GenerationSettings
from calibtune.grade import grade_multiple_choice
from calibtune.models import (
    LoadedModel,
    cache_dir,
    choose_device,
    choose_dtype,
    load_model,
    model_fingerprint,
    model_num_layers,
)
from calibtune.open_ended import (
    OpenEndedPrompt,
    answer_open_ended,
    build_grader,
    equivalence,
    grade_answers,
    grader_identity,
    likelihood_confidence,
    perplexity_confidence,
    references_of,
    sampling_consistency,
    verbalized_confidence,
)
from calibtune.progress import progress_bar
from calibtune.records import Answer, Question, answers_from_table, answers_to_table
from calibtune.report.labels import method_label
from calibtune.results import write_results
from calibtune.store import ArtifactStore, artifact_key, run_folder_lock
from calibtune.verbalized import VERBALIZED_PROMPT

ANSWER_STAGE_VERSION = 2
FEATURE_STAGE_VERSION = 2
CELL_STAGE_VERSION = 3  # 3: saved estimators record how the answers were asked (exemplars), for `ask`
SHARD_SIZE = 256  # questions or texts per stored shard of a model pass

Log = Callable[[str], None]


def select_questions(selections: Sequence[Selection], seed: int, limit_per_set: int | None = None,
                     require_choices: bool = False) -> list[Question]:
    """The questions a list of selections names, in order, with duplicates refused.

    ``require_choices`` refuses open-ended questions (a multiple choice study), naming the set at fault.
    """
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
            if require_choices and not question.is_multiple_choice:
                raise CalibtuneError(f"{sel.dataset}: question {question.id} has no choices (it is open-ended) but "
                                     "the study's task is multiple_choice; set task: open_ended")
            if question.id in seen:
                raise CalibtuneError(f"question {question.id} is selected twice")
            seen.add(question.id)
        out.extend(chosen)
    return out


@dataclass
class StudyInputs:
    """The questions of a study, split into training and evaluation (and k-shot exemplars, if any)."""

    train: list[Question]
    eval: list[Question]
    exemplars: list[Question] = field(default_factory=list)

    @property
    def all(self) -> list[Question]:
        """Training then evaluation questions."""
        return self.train + self.eval


def study_questions(config: StudyConfig, quick: bool = False) -> StudyInputs:
    """Load the study's questions and check that no evaluation question is also trained on."""
    mc = config.task == "multiple_choice"
    train = select_questions(config.train, config.seed, config.quick.train_per_set if quick else None, mc)
    evaluation = select_questions(config.eval, config.seed, config.quick.eval_per_set if quick else None, mc)
    overlap = {q.id for q in train} & {q.id for q in evaluation}
    if overlap:
        raise CalibtuneError(f"{len(overlap)} evaluation questions are also in the training set, "
                             f"e.g. {sorted(overlap)[0]}: make the train and eval selections disjoint")
    exemplars: list[Question] = []
    settings = config.open_ended
    if config.task == "open_ended" and settings.shots:
        exemplars = select_questions([settings.exemplars], config.seed)[: settings.shots]
        used = {q.id for q in train + evaluation} & {q.id for q in exemplars}
        if used:
            raise CalibtuneError(f"exemplar {sorted(used)[0]} is also a study question: make "
                                 "open_ended.exemplars disjoint from train and eval")
        if len(exemplars) < settings.shots:
            raise CalibtuneError(f"open_ended.exemplars holds {len(exemplars)} questions, fewer than "
                                 f"shots: {settings.shots}")
    return StudyInputs(train, evaluation, exemplars)


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
    _answer_keys: dict[str, str] = field(default_factory=dict, repr=False)
    _grader_cache: Any = field(default=None, repr=False)

    def run(self) -> pd.DataFrame:
        """The whole study; returns the metrics table and writes the run folder.

        The run folder is locked while the study runs: a second study on the same folder
        is refused with a clear message.
        """
        with run_folder_lock(self.output):
            return self._run()

    def _run(self) -> pd.DataFrame:
        cfg = self.config
        start = time.perf_counter()
        (self.output / "config.yaml").write_text(dump_config(cfg))
        inputs = study_questions(cfg, self.quick)
        self.log(f"{len(inputs.train)} training and {len(inputs.eval)} evaluation questions, "
                 f"{len(cfg.models)} models")
        answers = {t: self._graded_answers(t, inputs) for t in cfg.models}
        self._write_answers(answers, inputs)
        cells: list[pd.DataFrame] = []
        cells.extend(self._baseline_cells(answers, inputs))
        for e in cfg.models:
            cells.extend(self._estimator_cells(e, answers, inputs))
        table = pd.concat(cells, ignore_index=True)
        table.to_parquet(self.output / "scores.parquet", index=False)
        metrics = write_results(self.output, cfg, table, self._facts(answers, inputs))
        self.timings["total"] = time.perf_counter() - start
        (self.output / "timings.json").write_text(json.dumps(self.timings, indent=2))
        return metrics

    def _write_answers(self, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> None:
        """Each answering model's graded answers to the study's questions, as ``answers/<T>.parquet``
        (the table ``calibtune answer`` writes, so ``calibtune grade`` can regrade them)."""
        folder = self.output / "answers"
        folder.mkdir(exist_ok=True)
        for t, by_id in answers.items():
            answers_to_table([by_id[q.id] for q in inputs.all]).to_parquet(folder / f"{_slug(t)}.parquet", index=False)

    # -- stages ---------------------------------------------------------------------------------

    def _time(self, label: str, since: float) -> None:
        self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - since

    def _load(self, name: str) -> LoadedModel:
        t0 = time.perf_counter()
        lm = load_model(name, dtype=self.config.dtype, device=self.config.device)
        self._time(f"load {name}", t0)
        return lm

    def _cloze(self) -> ClozeSettings:
        cfg = self.config
        return ClozeSettings(prompt=cfg.prompt, option_prefix=cfg.option_prefix, select=cfg.select,
                             batch_size=cfg.batch_size)

    def _shard_plan(self, stage: str, version: int, settings: dict, ids: Sequence[str]) -> list[tuple[str, slice]]:
        """Keys and index ranges of a stage's shards: a crash loses at most the shard in flight."""
        plan = []
        for start in range(0, len(ids), SHARD_SIZE):
            part = slice(start, start + SHARD_SIZE)
            plan.append((artifact_key(stage, version, {**settings, "shard": _ids_digest(ids[part])}), part))
        return plan

    def _report_shards(self, what: str, plan: list, missing: list) -> None:
        if not missing:
            self.log(f"{what}: from the cache ({len(plan)} shards)")
        elif len(missing) < len(plan):
            self.log(f"{what}: resuming, {len(plan) - len(missing)} of {len(plan)} shards from the cache")

    def _graded_answers(self, model: str, inputs: StudyInputs) -> dict[str, Answer]:
        """Model T's graded answers to every study question, by question id (cached in shards)."""
        by_id = (self._open_ended_answers(model, inputs) if self.config.task == "open_ended"
                 else self._multiple_choice_answers(model, inputs))
        acc_train = np.mean([by_id[q.id].correct for q in inputs.train])
        acc_eval = np.mean([by_id[q.id].correct for q in inputs.eval])
        self.log(f"{model}: accuracy {acc_train:.3f} on training questions, {acc_eval:.3f} on evaluation questions")
        return by_id

    def _open_prompt(self, inputs: StudyInputs) -> OpenEndedPrompt:
        cfg = self.config
        return OpenEndedPrompt(cfg.prompt, tuple(inputs.exemplars), cfg.open_ended.chat_template)

    def _open_ended_answers(self, model: str, inputs: StudyInputs) -> dict[str, Answer]:
        """T's generated answers (cached in shards, ungraded), then graded by the study's grader."""
        cfg = self.config
        questions = inputs.all
        dtype = choose_dtype(cfg.dtype, choose_device(cfg.device))
        generation = GenerationSettings(max_new_tokens=cfg.open_ended.max_new_tokens, batch_size=cfg.batch_size)
        settings = {"model": model, "fingerprint": model_fingerprint(model), "dtype": str(dtype), "task": cfg.task,
                    "prompt": cfg.prompt, "exemplars": [q.id for q in inputs.exemplars],
                    "chat_template": cfg.open_ended.chat_template, "generation": asdict(generation)}
        ids = [q.id for q in questions]
        plan = self._shard_plan("answers", ANSWER_STAGE_VERSION, settings, ids)
        missing = [(key, part) for key, part in plan if not self.store.has("answers", key)]
        self._report_shards(f"answers of {model}", plan, missing)
        if missing:
            lm = self._load(model)
            prompt = self._open_prompt(inputs)
            t0 = time.perf_counter()
            with progress_bar(f"generate {model}", sum(len(ids[part]) for _, part in missing)) as advance:
                for key, part in missing:
                    answers = answer_open_ended(lm, questions[part], prompt, generation, advance)
                    self.store.put_table("answers", key, answers_to_table(answers), meta={"settings": settings})
            self._time(f"answer {model}", t0)
            del lm
        answers = [a for key, _ in plan for a in answers_from_table(self.store.get_table("answers", key))]
        t0 = time.perf_counter()
        grader = self._grader()
        graded = grade_answers(answers, questions, grader)
        self._time(f"grade {model}", t0)
        graded_settings = {**settings, "ids": _ids_digest(ids), "grader": grader_identity(grader)}
        self._answer_keys[model] = artifact_key("answers", ANSWER_STAGE_VERSION, graded_settings)
        return {a.question_id: a for a in graded}

    def _grader(self):
        """The study's grader for open-ended answers (built once; a local judge model is loaded here)."""
        if self._grader_cache is None:
            self._grader_cache = build_grader(self.config.open_ended, self.config.dtype, self.config.device,
                                              self.config.batch_size)
        return self._grader_cache

    def _multiple_choice_answers(self, model: str, inputs: StudyInputs) -> dict[str, Answer]:
        """T's cloze answers, graded against the gold option (cached in shards)."""
        cloze = self._cloze()
        questions = inputs.all
        dtype = choose_dtype(self.config.dtype, choose_device(self.config.device))
        settings = {"model": model, "fingerprint": model_fingerprint(model), "dtype": str(dtype),
                    "prompt": cloze.prompt, "option_prefix": cloze.option_prefix, "select": cloze.select,
                    "batch_size": cloze.batch_size}
        ids = [q.id for q in questions]
        self._answer_keys[model] = artifact_key("answers", ANSWER_STAGE_VERSION, {**settings, "ids": _ids_digest(ids)})
        plan = self._shard_plan("answers", ANSWER_STAGE_VERSION, settings, ids)
        missing = [(key, part) for key, part in plan if not self.store.has("answers", key)]
        self._report_shards(f"answers of {model}", plan, missing)
        if missing:
            lm = self._load(model)
            t0 = time.perf_counter()
            with progress_bar(f"answer  {model}", sum(len(ids[part]) for _, part in missing)) as advance:
                for key, part in missing:
                    chunk = questions[part]
                    graded = grade_multiple_choice(answer_multiple_choice(lm, chunk, cloze, advance), chunk)
                    self.store.put_table("answers", key, answers_to_table(graded), meta={"settings": settings})
            self._time(f"answer {model}", t0)
            del lm
        graded = [a for key, _ in plan for a in answers_from_table(self.store.get_table("answers", key))]
        return {a.question_id: a for a in graded}

    def _estimator_cells(self, e: str, answers: dict[str, dict[str, Answer]],
                         inputs: StudyInputs) -> list[pd.DataFrame]:
        """Every matrix method's cells with estimator model ``e``; the model is loaded once, and only if needed."""
        cfg = self.config
        cells: list[pd.DataFrame] = []
        lazy = _Lazy(lambda: self._load(e))
        probe_features = _Lazy(lambda: self._probe_features(e, lazy, answers, inputs))
        methods = {"probe": lambda t, out, ckpt: self._probe_cell(e, t, probe_features(), answers[t], inputs, out),
                   "zero_shot": lambda t, out, ckpt: self._zero_shot_cell(e, t, lazy(), answers[t], inputs),
                   "lora_prompt": lambda t, out, ckpt: self._lora_prompt_cell(e, t, lazy(), answers[t], inputs, out,
                                                                              ckpt),
                   "lora": lambda t, out, ckpt: self._lora_head_cell(e, t, lazy(), answers[t], inputs, out, ckpt)}
        for method in MATRIX_METHODS:
            if method in cfg.methods:
                for t in cfg.models:
                    cells.append(self._cached_cell(method, e, t, inputs, methods[method]))
        return cells

    def _method_settings(self, method: str) -> dict:
        """Everything in the config that a method's cell depends on (for its cache key)."""
        cfg = self.config
        common = {"prompt": cfg.prompt, "option_prefix": cfg.option_prefix, "batch_size": cfg.batch_size,
                  "temperature_scaling": cfg.temperature_scaling, "quick": self.quick,
                  "quick_settings": cfg.quick.model_dump() if self.quick else None}
        specific = {"probe": {"probe": cfg.probe.model_dump(), "features": cfg.features.model_dump()},
                    "lora_prompt": {"lora_prompt": cfg.lora_prompt.model_dump()},
                    "lora": {"lora": cfg.lora.model_dump()},
                    "zero_shot": {"query": cfg.lora_prompt.query, "options": list(cfg.lora_prompt.options),
                                  "calibration": cfg.zero_shot_calibration},
                    "verbalized": {"verbalized": cfg.verbalized.model_dump(), "calibration": cfg.zero_shot_calibration,
                                   "prompt_text": VERBALIZED_PROMPT},
                    "sampling": {"sampling": cfg.sampling.model_dump(), "calibration": cfg.zero_shot_calibration,
                                 "open_ended": cfg.open_ended.model_dump()}}[method]
        return {**common, **specific}

    def _cached_cell(self, method: str, e: str, t: str, inputs: StudyInputs,
                     compute: Callable[[str, Path, Path], pd.DataFrame]) -> pd.DataFrame:
        """One cell's scores, from the store when the same cell was computed before.

        A computed cell's estimator is saved inside its artifact and copied into the run
        folder, so a cached cell still gives the run folder its estimator. Training
        checkpoints live under ``checkpoints/<key>`` in the store until the cell is done.
        """
        cfg = self.config
        dtype = choose_dtype(cfg.dtype, choose_device(cfg.device))
        settings = {"method": method, "estimator_model": e, "fingerprint": model_fingerprint(e), "dtype": str(dtype),
                    "answers": self._answer_keys[t], "train": _ids_digest([q.id for q in inputs.train]),
                    "eval": _ids_digest([q.id for q in inputs.eval]), "seed": cfg.seed,
                    "settings": self._method_settings(method)}
        key = artifact_key("cell", CELL_STAGE_VERSION, settings)
        dest = self.output / "estimators" / method / f"{_slug(e)}__on__{_slug(t)}"
        if self.store.has("cell", key):
            self.log(f"{method_label(method)} {e} on {t}: from the cache ({key[:12]})")
        else:
            t0 = time.perf_counter()
            checkpoint = self.store.root / "checkpoints" / key
            with self.store.writing("cell", key, {"settings": settings}) as folder:
                table = compute(t, folder / "estimator", checkpoint)
                table.to_parquet(folder / "table.parquet", index=False)
            shutil.rmtree(checkpoint, ignore_errors=True)
            self._time(f"{method} {e} on {t}", t0)
        saved = self.store.path("cell", key) / "estimator"
        if saved.is_dir():
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(saved, dest)
        return pd.read_parquet(self.store.path("cell", key) / "table.parquet")

    def _features(self, e: str, lazy: _Lazy, texts: list[str]) -> np.ndarray:
        """E's features for texts (cached in shards); loads E only if a shard is missing."""
        cfg = self.config
        layers = candidate_layers(model_num_layers(e), cfg.features.layers)
        dtype = choose_dtype(cfg.dtype, choose_device(cfg.device))
        settings = {"model": e, "fingerprint": model_fingerprint(e), "dtype": str(dtype),
                    "layers": layers, "token": cfg.features.token, "batch_size": cfg.batch_size}
        plan = self._shard_plan("features", FEATURE_STAGE_VERSION, settings, texts)
        missing = [(key, part) for key, part in plan if not self.store.has("features", key)]
        self._report_shards(f"features of {e}", plan, missing)
        if missing:
            lm = lazy()
            t0 = time.perf_counter()
            with progress_bar(f"features {e}", sum(len(texts[part]) for _, part in missing)) as advance:
                for key, part in missing:
                    feats = extract_features(lm, texts[part], layers, token=cfg.features.token,
                                             batch_size=cfg.batch_size, progress=advance)
                    self.store.put_arrays("features", key, {"features": feats}, meta={"settings": settings})
            self._time(f"features {e}", t0)
        return np.concatenate([self.store.get_arrays("features", key)["features"] for key, _ in plan])

    def _prompts(self, answers: dict[str, Answer], questions: Sequence[Question]) -> tuple[list[str], list[str]]:
        """The question prompts and the proposed answers (with their leading separator)."""
        cfg = self.config
        return ([format_prompt(q, cfg.prompt) for q in questions],
                [cfg.option_prefix + answers[q.id].text for q in questions])

    def _labels(self, answers: dict[str, Answer], questions: Sequence[Question]) -> np.ndarray:
        return np.array([answers[q.id].correct for q in questions], dtype=np.int64)

    def _meta(self, e: str, t: str, n_train: int, inputs: StudyInputs) -> dict:
        """What a saved estimator records of how its answers were made (``calibtune ask`` asks the same way)."""
        cfg = self.config
        meta = {"estimator_model": e, "trained_on": t, "prompt": cfg.prompt, "option_prefix": cfg.option_prefix,
                "n_train": n_train, "seed": cfg.seed, "task": cfg.task}
        if cfg.task == "open_ended":
            exemplars = [{"id": q.id, "question": q.text, "answer": references_of(q)[0]} for q in inputs.exemplars]
            meta["answering"] = {
                "exemplars": exemplars,
                "chat_template": cfg.open_ended.chat_template, "max_new_tokens": cfg.open_ended.max_new_tokens}
        return meta

    def _cell(self, method: str, e: str, t: str, inputs: StudyInputs, p: np.ndarray, y: np.ndarray,
              p_cal: np.ndarray | None, y_cal: np.ndarray | None) -> pd.DataFrame:
        """Score rows of one cell, with temperature-scaled P(correct) fitted on the calibration answers.

        A NaN P(correct) (a verbalized reply with no probability in it) leaves its answer out
        of the cell, and the count is logged; metrics.json reports it as ``n_left_out``.
        """
        p, y = np.asarray(p, dtype=float), np.asarray(y)
        keep = np.isfinite(p)
        if not keep.all():
            self.log(f"{method_label(method)} {e} on {t}: {int((~keep).sum())} of {len(p)} evaluation answers have "
                     "no P(correct) (an unparseable reply) and are left out of this cell")
        scaler = TemperatureScaler()
        if self.config.temperature_scaling and p_cal is not None:
            cal_keep = np.isfinite(np.asarray(p_cal, dtype=float))
            if cal_keep.any() and len(np.unique(np.asarray(y_cal)[cal_keep])) == 2:
                scaler = TemperatureScaler.fit(np.asarray(p_cal)[cal_keep], np.asarray(y_cal)[cal_keep])
        questions = [q for q, k in zip(inputs.eval, keep) if k]
        return pd.DataFrame({
            "method": method, "model": e, "trained_on": t, "evaluated_on": t,
            "question_id": [q.id for q in questions], "dataset": [q.dataset for q in questions],
            "subject": [q.subject for q in questions],
            "p_correct": p[keep], "label": y[keep].astype(int),
            "p_correct_ts": scaler.transform(p[keep]), "temperature": scaler.temperature,
        })

    def _baseline_cells(self, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> list[pd.DataFrame]:
        """Baselines read off each answering model: from its answers, or (verbalized, sampling) by asking it again."""
        cfg = self.config
        from_answers = {"option_confidence": lambda a: option_confidence(a, cfg.select),
                        "likelihood": likelihood_confidence, "perplexity": perplexity_confidence}
        frames = []
        for method in BASELINE_METHODS:
            if method not in cfg.methods:
                continue
            for t, by_id in answers.items():
                if method in from_answers:
                    score = from_answers[method]
                    p = np.array([score(by_id[q.id]) for q in inputs.eval])
                    p_cal = np.array([score(by_id[q.id]) for q in inputs.train])
                    frames.append(self._cell(method, t, t, inputs, p, self._labels(by_id, inputs.eval),
                                             p_cal, self._labels(by_id, inputs.train)))
                else:
                    def compute(_t: str, out: Path, ckpt: Path, method: str = method, t: str = t) -> pd.DataFrame:
                        return self._asked_baseline(method, t, answers[t], inputs)

                    frames.append(self._cached_cell(method, t, t, inputs, compute))
        return frames

    def _calibration_sample(self, inputs: StudyInputs) -> list[Question]:
        """A seeded sample of training questions for fitting the temperature of untrained methods."""
        cfg = self.config
        n_cal = min(cfg.zero_shot_calibration, len(inputs.train))
        if self.quick:
            n_cal = min(n_cal, cfg.quick.train_per_set)
        return random.Random(f"{cfg.seed}-zero-shot").sample(list(inputs.train), n_cal) if n_cal else []

    def _asked_baseline(self, method: str, t: str, answers: dict[str, Answer], inputs: StudyInputs) -> pd.DataFrame:
        """Verbalized confidence or sampling consistency of T, on the evaluation and calibration questions."""
        cfg = self.config
        lm = self._load(t)
        cal = self._calibration_sample(inputs)
        questions = inputs.eval + cal
        given = [answers[q.id] for q in questions]
        if method == "verbalized":
            p, replies = verbalized_confidence(lm, questions, given, cfg.verbalized.max_new_tokens, cfg.batch_size)
            self.log(f"verbalized {t}: {int(np.isnan(p).sum())} of {len(p)} replies had no parseable probability, "
                     f"e.g. {next((r for r, v in zip(replies, p) if np.isnan(v)), '')!r}")
        else:
            s = cfg.sampling
            generation = GenerationSettings(max_new_tokens=s.max_new_tokens, batch_size=cfg.batch_size)
            p = sampling_consistency(lm, questions, given, self._open_prompt(inputs), equivalence(self._grader()),
                                     s.k, s.temperature, cfg.seed, generation)
        n = len(inputs.eval)
        return self._cell(method, t, t, inputs, p[:n], self._labels(answers, inputs.eval), p[n:],
                          self._labels(answers, cal))

    def _probe_features(self, e: str, lazy: _Lazy, answers: dict[str, dict[str, Answer]],
                        inputs: StudyInputs) -> tuple[np.ndarray, dict[str, int], list[int]]:
        """E's features of every answering model's texts, one pass over the unique texts."""
        texts = [x for by_id in answers.values() for x in self._texts(by_id, inputs.all)]
        # Answering models often give the same answer: each text is encoded once.
        unique = sorted(set(texts))
        feats = self._features(e, lazy, unique)
        layers = candidate_layers(model_num_layers(e), self.config.features.layers)
        return feats, {x: i for i, x in enumerate(unique)}, layers

    def _probe_cell(self, e: str, t: str, features: tuple[np.ndarray, dict[str, int], list[int]],
                    answers: dict[str, Answer], inputs: StudyInputs, out: Path) -> pd.DataFrame:
        cfg = self.config
        feats, index, layers = features
        y_train, y_eval = self._labels(answers, inputs.train), self._labels(answers, inputs.eval)
        x_train = feats[[index[x] for x in self._texts(answers, inputs.train)]]
        meta = {**self._meta(e, t, len(y_train), inputs), "token": cfg.features.token}
        probe = ProbeEstimator(cfg.probe.to_config(cfg.seed), layers=tuple(layers), meta=meta).fit(x_train, y_train)
        probe.save(out)
        p = probe.predict_proba(feats[[index[x] for x in self._texts(answers, inputs.eval)]])
        val = probe.val_indices
        self.log(f"probe {e} on {t}: layer {probe.layer} (validation AUROC by layer {_fmt_scores(probe.layer_scores)})")
        return self._cell("probe", e, t, inputs, p, y_eval, probe.predict_proba(x_train[val]), y_train[val])

    def _texts(self, answers: dict[str, Answer], questions: Sequence[Question]) -> list[str]:
        cfg = self.config
        return [proposed_answer_text(q, answers[q.id].text, cfg.prompt, cfg.option_prefix) for q in questions]

    def _adapter_train_set(self, inputs: StudyInputs, settings) -> list[Question]:
        """The (seeded sample of) training questions that adapter methods train on."""
        cap = self.config.quick.train_per_set * len(self.config.train) if self.quick else settings.max_train_examples
        if cap is None or cap >= len(inputs.train):
            return list(inputs.train)
        return random.Random(f"{self.config.seed}-adapters").sample(list(inputs.train), cap)

    def _adapter_settings(self, settings):
        return settings.model_copy(update={"max_steps": self.config.quick.adapter_steps}) if self.quick else settings

    def _zero_shot_cell(self, e: str, t: str, lm: LoadedModel, answers: dict[str, Answer],
                        inputs: StudyInputs) -> pd.DataFrame:
        cfg = self.config
        query = cfg.lora_prompt.to_config(cfg.seed).query
        tokens = option_token_ids(lm.tokenizer, query.query, query.options)
        cal = self._calibration_sample(inputs)
        seqs = encode_queries(lm.tokenizer, *self._prompts(answers, inputs.eval + cal), query.query)
        p_all = query_p_correct(lm, seqs, tokens, cfg.batch_size, f"zero-shot query {e} on {t}")
        n = len(inputs.eval)
        return self._cell("zero_shot", e, t, inputs, p_all[:n], self._labels(answers, inputs.eval),
                          p_all[n:] if cal else None, self._labels(answers, cal) if cal else None)

    def _lora_prompt_cell(self, e: str, t: str, lm: LoadedModel, answers: dict[str, Answer],
                          inputs: StudyInputs, out: Path, checkpoint: Path) -> pd.DataFrame:
        cfg = self.config
        settings = self._adapter_settings(cfg.lora_prompt)
        train = self._adapter_train_set(inputs, settings)
        est_cfg = settings.to_config(cfg.seed)
        y_train = self._labels(answers, train)
        seqs = encode_queries(lm.tokenizer, *self._prompts(answers, train), est_cfg.query.query)
        est = LoraPromptEstimator(lm, est_cfg, meta={**self._meta(e, t, len(train), inputs)})
        try:
            est.fit(seqs, y_train, checkpoint)
            est.save(out)
            eval_seqs = encode_queries(lm.tokenizer, *self._prompts(answers, inputs.eval), est_cfg.query.query)
            val = est.val_indices
            p_all = est.predict_proba(eval_seqs + [seqs[i] for i in val])
        finally:
            est.release()
        n = len(inputs.eval)
        self.log(f"LoRA + Prompt {e} on {t}: {est.log.steps} steps, best validation loss "
                 f"{est.log.best_val_loss:.4f} at step {est.log.best_step}, {est.log.seconds:.0f} s")
        return self._cell("lora_prompt", e, t, inputs, p_all[:n], self._labels(answers, inputs.eval),
                          p_all[n:], y_train[val])

    def _lora_head_cell(self, e: str, t: str, lm: LoadedModel, answers: dict[str, Answer],
                        inputs: StudyInputs, out: Path, checkpoint: Path) -> pd.DataFrame:
        cfg = self.config
        settings = self._adapter_settings(cfg.lora)
        train = self._adapter_train_set(inputs, settings)
        y_train = self._labels(answers, train)
        seqs = encode_texts(lm.tokenizer, self._texts(answers, train))
        est = LoraHeadEstimator(lm, settings.to_config(cfg.seed), meta={**self._meta(e, t, len(train), inputs)})
        try:
            est.fit(seqs, y_train, checkpoint)
            est.save(out)
            val = est.val_indices
            p_all = est.predict_proba(encode_texts(lm.tokenizer, self._texts(answers, inputs.eval))
                                      + [seqs[i] for i in val])
        finally:
            est.release()
        n = len(inputs.eval)
        self.log(f"LoRA {e} on {t}: layer {est.layer}, {est.log.steps} steps, best validation loss "
                 f"{est.log.best_val_loss:.4f} at step {est.log.best_step}, {est.log.seconds:.0f} s")
        return self._cell("lora", e, t, inputs, p_all[:n], self._labels(answers, inputs.eval), p_all[n:], y_train[val])

    # -- outputs --------------------------------------------------------------------------------

    def _facts(self, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> dict:
        """Study facts for metrics.json: each answering model's accuracy and the question counts."""
        accuracy = {t: {"train": float(np.mean([a[q.id].correct for q in inputs.train])),
                        "eval": float(np.mean([a[q.id].correct for q in inputs.eval]))} for t, a in answers.items()}
        return {"answer_accuracy": accuracy, "n_train": len(inputs.train), "n_eval": len(inputs.eval),
                "task": self.config.task}


class _Lazy:
    """Computes a value on first use, so a fully cached study does no model work."""

    def __init__(self, make: Callable[[], Any]):
        self._make, self._value, self._done = make, None, False

    def __call__(self) -> Any:
        if not self._done:
            self._value, self._done = self._make(), True
        return self._value




def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in name.strip("/").split("/")[-1])


def _fmt_scores(scores: dict[int, float]) -> str:
    return ", ".join(f"{k}: {v:.3f}" for k, v in scores.items())
