"""The features stage: an estimator model's hidden states of an answering model's "question + answer", for the Probe.

Stored per (estimator model E, answering model T) in shards aligned with T's answer
shards, each keyed by its questions' prompts and T's answers; editing one question
recomputes one shard. Where E answers the study's questions by cloze scoring, its
answering pass reads every option of every question, which is every text T can have
answered: that pass keeps the states at each option's last token (``option_features``,
per answering shard), and the shards of every T are taken from them, so no second pass
is made, for E's own answers or for any other model's (``calibtune.stages.answers``).
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


# The store's stage for an estimator model's states at the end of every option, from its answering pass.
OPTION_FEATURES = "option_features"


def option_features_key(stage: FeaturesStage, config: StudyConfig, questions: Sequence[Question]) -> str:
    """The key of ``stage``'s model's states at every option of ``questions`` (one answering shard): what they
    depend on is each question's id, prompt and options as read."""
    contents = [[q.id, format_prompt(q, config.prompt), [config.option_prefix + c for c in q.choices]]
                for q in questions]
    (key, _), = stage.shards(contents, {"of": "every option"}, size=max(1, len(questions)))
    return key


def put_option_features(rt: Runtime, stage: FeaturesStage, config: StudyConfig, questions: Sequence[Question],
                        option_features: Sequence[np.ndarray]) -> None:
    """Keep the states at every option of ``questions`` (``[n_options, layers, hidden]`` each), read by the
    answering pass, as one flat array and each question's offset into it."""
    offsets = np.cumsum([0] + [len(f) for f in option_features])
    rt.store.put_arrays(OPTION_FEATURES, option_features_key(stage, config, questions),
                        {"features": np.concatenate(option_features), "offsets": offsets},
                        meta={"settings": stage.settings(), "from": "answering pass"})


def features_from_options(rt: Runtime, stage: FeaturesStage, config: StudyConfig, questions: Sequence[Question],
                          answers: Mapping[str, Answer]) -> np.ndarray | None:
    """The features of ``answers`` to ``questions`` taken from the stored states at every option (None when
    those are not stored, or an answer is not one of its question's options as they were read). Only a cloze
    answering pass stores them, and only at the last token: the stage's settings are in the key."""
    key = option_features_key(stage, config, questions)
    if not rt.store.has(OPTION_FEATURES, key):
        return None
    choices = [answers[q.id].choice for q in questions]
    if any(k is None or not 0 <= k < len(q.choices) or q.choices[k] != answers[q.id].text
           for q, k in zip(questions, choices)):
        return None
    stored = rt.store.get_arrays(OPTION_FEATURES, key)
    return stored["features"][stored["offsets"][:-1] + np.asarray(choices)]


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
    what = f"features of {answering_model}'s answers read by {model}"
    rt.report_shards(what, plan, missing)
    with rt.timed(f"features {model}"):
        taken = []
        for key, part in mine:
            feats = features_from_options(rt, stage, config, questions[part], answers)
            if feats is not None:
                rt.store.put_arrays("features", key, {"features": feats},
                                    meta={"settings": stage.settings(), "from": f"{model}'s answering pass"})
                taken.append(key)
    if taken:
        rt.log(f"{what}: {len(taken)} of {len(plan)} shards from {model}'s answering pass")
    mine = [(key, part) for key, part in mine if key not in taken]
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
