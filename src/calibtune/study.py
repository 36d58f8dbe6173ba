"""The cross-model study: every estimator model E on every answering model T, for every method.

``cell(E, T)`` is a method's estimator built on model E, fit on T's graded training
answers and evaluated on T's held-out graded answers. The driver only plans: answer
with every model (stage ``answers``), then make every cell (stage ``cells``; the Probe's
features come from stage ``features``), then write the run folder. Each stage caches
its work in the artifact store, so a rerun skips it, and a fully cached study loads no model.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from calibtune.bundled import cache_dir
from calibtune.config import StudyConfig, cell_processes, dump_config, method_settings
from calibtune.distributed import ONE_PROCESS, DataParallel, Ranks, is_spent, row_owners
from calibtune.methods import METHODS, CellContext, Method
from calibtune.models import LoadedModel, load_model, model_slugs
from calibtune.questions import StudyInputs, study_questions, training_subsets
from calibtune.records import Answer, answers_to_table
from calibtune.results import write_results
from calibtune.stages.answers import graded_answers
from calibtune.stages.base import Runtime
from calibtune.stages.cells import cell_key, run_cell
from calibtune.stages.features import probe_features, study_reads_features
from calibtune.store import ArtifactStore, run_folder_lock


@dataclass
class Study:
    """Runs a ``StudyConfig`` into a run folder."""

    config: StudyConfig
    output: Path
    quick: bool = False
    store: ArtifactStore = field(default_factory=lambda: ArtifactStore(cache_dir() / "store"))
    log: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)

    def run(self) -> pd.DataFrame | None:
        """The whole study; returns the metrics table and writes the run folder (the main process of several
        returns it; the others return None once their shards and cells are stored).

        The run folder is locked while the study runs (a second study on it is refused),
        and the store is marked in use (``calibtune cache prune`` waits for it).
        """
        ranks = Ranks.current()
        lock = run_folder_lock(self.output) if ranks.main else contextlib.nullcontext()
        with lock, self.store.in_use():
            return self._run(ranks)

    def _run(self, ranks: Ranks) -> pd.DataFrame | None:
        cfg, start = self.config, time.perf_counter()
        if ranks.main:
            (self.output / "config.yaml").write_text(dump_config(cfg))
        inputs = study_questions(cfg, self.quick)
        calibration = f", {len(inputs.calibrate)} calibration questions" if inputs.calibrate else ""
        self.log(f"{ranks.tag()}{len(inputs.train)} training and {len(inputs.eval)} evaluation questions"
                 f"{calibration}, {len(cfg.models)} models")
        # what one cell's passes over E leave for another (its row); it goes when the pool lets E go (its tensors
        # live on E's device, and a row of another model has no use for them)
        shared: dict[str, dict] = {e: {} for e in cfg.models}
        pool = ModelPool(cfg.dtype, cfg.device, self.timings, on_release=lambda e: shared.get(e, {}).clear())
        rt = Runtime(self.store, self.log, pool, self.timings, ranks)
        grader = _Lazy(lambda: _study_grader(cfg))
        answers = {t: graded_answers(rt, cfg, inputs, t, grader() if cfg.task == "open_ended" else None)
                   for t in cfg.models}
        if ranks.main:
            self._write_answers(answers, inputs)
        features = {(e, t): _Lazy(lambda e=e, t=t: probe_features(rt, cfg, e, t, answers[t], inputs))
                    for e in cfg.models for t in cfg.models}
        if ranks.count > 1 and study_reads_features(cfg):
            for lazy in features.values():  # every process takes part in every features stage, in one order
                lazy()
        slugs = model_slugs(cfg.models)

        def pending(name: str, e: str, t: str, part: StudyInputs) -> bool:
            return name in cfg.methods and not self.store.has(
                "cell", cell_key(cfg, METHODS[name], e, answers[t], part, self.quick))

        plan = [(part, method, e, t) for part in training_subsets(inputs, cfg.train_sizes, cfg.seed, self.quick)
                for method, e, t in plan_cells(cfg)]  # one study, or one per training size of a data-scale study

        def cell(part: StudyInputs, method: Method, e: str, t: str,
                 parallel: DataParallel = ONE_PROCESS) -> pd.DataFrame:
            context = CellContext(
                study=cfg, settings=method_settings(cfg, method.name), estimator_model=e, answering_model=t,
                inputs=part, answers=answers[t], load_model=rt.models.get, probe_features=features[e, t],
                grader=grader, log=lambda text: self.log(ranks.tag() + text), quick=self.quick, shared=shared[e],
                pending=lambda name: pending(name, e, t, part), parallel=parallel)
            size = f"__n{len(part.train)}" if cfg.train_sizes else ""
            folder = self.output / "estimators" / method.name / f"{slugs[e]}__on__{slugs[t]}{size}"
            rows = run_cell(rt, cfg, method, context, self.quick, folder)
            return rows.assign(train_size=len(part.train)) if cfg.train_sizes else rows

        if ranks.count > 1:  # each process computes and stores its cells; the main one then collects them all
            ranks.wait()  # every process sees the same cells still to compute
            training = [item for item in plan if item[1].data_parallel and pending(item[1].name, item[2], item[3],
                                                                                   item[0])]
            sharded = cfg.adapter_sharding == "fsdp"
            n_groups, parallel = ranks.groups(cell_processes(cfg.cell_processes, ranks.count, len(training),
                                                             sharded), sharded=sharded)
            if parallel.size > 1:
                how = ", the weights sharded (FSDP)" if parallel.sharded else ""
                self.log(f"{ranks.tag()}{len(training)} adapter cells to train, {n_groups} at a time, each by "
                         f"{parallel.size} processes together{how}")
            # whole rows to a process where they divide evenly (one cell's reads of its model serve the next), else
            # each cell by its position
            rows = row_owners(cfg.models, ranks.count) if parallel.size == 1 else None
            for position, (part, method, e, t) in enumerate(training):  # a group trains each of its cells together
                if (position % n_groups if rows is None else rows[e]) == parallel.group_index:
                    cell(part, method, e, t, parallel)
            for position, (part, method, e, t) in enumerate(plan):  # then the other cells, one process each
                if method.needs_model and not method.data_parallel and (
                        ranks.owns(position) if rows is None else rows[e] == ranks.index):
                    cell(part, method, e, t)
            ranks.wait()
            if not ranks.main:
                return None
        table = pd.concat([cell(*item) for item in plan], ignore_index=True)
        table.to_parquet(self.output / "scores.parquet", index=False)
        metrics = write_results(self.output, cfg, table, _facts(cfg, answers, inputs))
        self.timings["total"] = time.perf_counter() - start
        (self.output / "timings.json").write_text(json.dumps(self.timings, indent=2))
        return metrics

    def _write_answers(self, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> None:
        """Each answering model's graded answers to the study's questions, as ``answers/<T>.parquet``
        (the table ``calibtune answer`` writes, so ``calibtune grade`` can regrade them)."""
        folder = self.output / "answers"
        folder.mkdir(exist_ok=True)
        slugs = model_slugs(self.config.models)
        for t, by_id in answers.items():
            answers_to_table([by_id[q.id] for q in inputs.all]).to_parquet(folder / f"{slugs[t]}.parquet",
                                                                         index=False)


def plan_cells(config: StudyConfig) -> Iterator[tuple[Method, str, str]]:
    """Every cell of the study, in order: (method, estimator model E, answering model T).

    Methods read off the answering model come first (E = T), then each estimator model's
    row of matrix methods, so a model is loaded once per row.
    """
    chosen = [m for name, m in METHODS.items() if name in config.methods]
    for method in chosen:
        if method.scope == "answerer":
            for t in config.models:
                yield method, t, t
    for e in config.models:
        for method in chosen:
            if method.scope == "matrix":
                for t in config.models:
                    yield method, e, t


class ModelPool:
    """Loads models on first use and keeps the last one (one resident model: 7B models are large); a model whose
    weights a cell sharded over its group (FSDP) is loaded again. ``on_release(name)`` is called when a model is
    let go for another."""

    def __init__(self, dtype: str, device: str, timings: dict[str, float],
                 on_release: Callable[[str], None] | None = None):
        self.dtype, self.device, self.timings = dtype, device, timings
        self.on_release = on_release
        self._name: str | None = None
        self._model: LoadedModel | None = None

    def get(self, name: str) -> LoadedModel:
        """The model ``name``, loaded now unless it is the one held."""
        if self._name != name or (self._model is not None and is_spent(self._model.model)):
            self._model = None  # let the previous model go before the next one loads
            if self.on_release is not None and self._name not in (None, name):
                self.on_release(self._name)
            start = time.perf_counter()
            self._model = load_model(name, dtype=self.dtype, device=self.device)
            self._name = name
            label = f"load {name}"
            self.timings[label] = self.timings.get(label, 0.0) + time.perf_counter() - start
        assert self._model is not None
        return self._model


class _Lazy:
    """Computes a value on first use, so a fully cached study does no model work."""

    def __init__(self, make: Callable[[], object]):
        self._make, self._value, self._done = make, None, False

    def __call__(self):
        if not self._done:
            self._value, self._done = self._make(), True
        return self._value


def _study_grader(config: StudyConfig):
    from calibtune.graders import build_grader

    return build_grader(config.open_ended, config.dtype, config.device, config.batch_size)


def _facts(config: StudyConfig, answers: dict[str, dict[str, Answer]], inputs: StudyInputs) -> dict:
    """Study facts for metrics.json: each answering model's accuracy and the question counts."""
    parts = {"train": inputs.train, "eval": inputs.eval, "calibrate": inputs.calibrate}
    accuracy = {t: {part: float(sum(a[q.id].label for q in questions) / len(questions))
                    for part, questions in parts.items() if questions}
                for t, a in answers.items()}
    return {"answer_accuracy": accuracy, "n_train": len(inputs.train), "n_eval": len(inputs.eval),
            "n_calibrate": len(inputs.calibrate), "task": config.task}
