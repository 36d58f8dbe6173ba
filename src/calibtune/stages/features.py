"""The features stage: an estimator model's hidden states of an answering model's "question + answer", for the Probe.

Stored per (estimator model E, answering model T) in shards aligned with T's answer
shards, each keyed by its questions' prompts and T's answers; editing one question
recomputes one shard. Where E is T and its answers are made by cloze scoring, the
answering pass reads the same tokens and fills these shards as it goes
(``calibtune.stages.answers``), so no second pass is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from calibtune.config import StudyConfig
from calibtune.methods import METHODS, FeatureTable
from calibtune.models import model_num_layers
from calibtune.progress import progress_bar
from calibtune.prompts import format_prompt
from calibtune.questions import StudyInputs
from calibtune.records import Answer, Question
from calibtune.stages.base import ModelStage, Runtime


@dataclass(frozen=True)
class FeaturesStage(ModelStage):
    """Hidden states at ``layers`` of each "prompt + answer", at its last token (or averaged over its tokens)."""

    name: ClassVar[str] = "features"
    version: ClassVar[int] = 4
    layers: tuple[int, ...]
    token: str
    batch_size: int
    token_budget: int

    def shard_contents(self, config: StudyConfig, questions: Sequence[Question],
                       answers: Mapping[str, Answer]) -> list[list[str]]:
        """What a shard's features depend on: each question's id, prompt and proposed answer."""
        return [[q.id, format_prompt(q, config.prompt), config.option_prefix + answers[q.id].text]
                for q in questions]


def features_stage(config: StudyConfig, model: str) -> FeaturesStage:
    """The features stage of estimator model ``model``: the layers the Probe chooses among, for this model."""
    from calibtune.features import candidate_layers

    layers = candidate_layers(model_num_layers(model), config.features.layers)
    return FeaturesStage.of(model, config.dtype, config.device, layers=tuple(layers), token=config.features.token,
                            batch_size=config.batch_size, token_budget=config.token_budget)


def study_reads_features(config: StudyConfig) -> bool:
    """Whether a method of the study reads the features stage (it declares the ``features`` settings)."""
    return any("features" in METHODS[m].study_settings for m in config.methods)


def probe_features(rt: Runtime, config: StudyConfig, model: str, answering_model: str,
                   answers: Mapping[str, Answer], inputs: StudyInputs) -> FeatureTable:
    """Estimator model ``model``'s features of every answer of ``answering_model`` to the study's questions."""
    from calibtune.features import extract_features

    stage = features_stage(config, model)
    questions = inputs.all
    contents = stage.shard_contents(config, questions, answers)
    plan = stage.shards(contents)
    missing, mine = rt.my_missing("features", plan)
    rt.report_shards(f"features of {answering_model}'s answers read by {model}", plan, missing)
    if mine:
        lm = rt.models.get(model)
        with rt.timed(f"features {model}"), progress_bar(f"{rt.ranks.tag()}features {model}",
                                                         sum(len(questions[p]) for _, p in mine)) as advance:
            for key, part in mine:
                prompts, texts = zip(*[(c[1], c[2]) for c in contents[part]])
                feats = extract_features(lm, prompts, texts, stage.layers, token=stage.token,
                                         token_budget=stage.token_budget, max_rows=stage.batch_size,
                                         progress=advance)
                rt.store.put_arrays("features", key, {"features": feats}, meta={"settings": stage.settings()})
    rt.ranks.wait()  # the shards the other processes computed are in the store
    feats = np.concatenate([rt.store.get_arrays("features", key)["features"] for key, _ in plan])
    return FeatureTable(feats, {q.id: i for i, q in enumerate(questions)}, stage.layers)
