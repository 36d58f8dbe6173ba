"""The features stage: an estimator model's hidden states of "question + proposed answer" texts, for the Probe.

One pass over the distinct texts of every answering model (answering models often give
the same answer, and each text is read once), stored in shards of texts keyed by the
texts themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from calibtune.config import StudyConfig
from calibtune.methods import FeatureTable
from calibtune.models import model_num_layers
from calibtune.progress import progress_bar
from calibtune.questions import StudyInputs
from calibtune.records import Answer
from calibtune.stages.base import ModelStage, Runtime


@dataclass(frozen=True)
class FeaturesStage(ModelStage):
    """Hidden states at ``layers`` of each text, at its last token (or averaged over its tokens)."""

    name: ClassVar[str] = "features"
    version: ClassVar[int] = 3
    layers: tuple[int, ...]
    token: str
    batch_size: int


def candidate_layers_of(config: StudyConfig, model: str) -> list[int]:
    """The layers the Probe chooses among, for this model."""
    from calibtune.features import candidate_layers

    return candidate_layers(model_num_layers(model), config.features.layers)


def probe_features(rt: Runtime, config: StudyConfig, model: str, answers: Mapping[str, Mapping[str, Answer]],
                   inputs: StudyInputs) -> FeatureTable:
    """Estimator model ``model``'s features of every answering model's "question + answer" texts."""
    from calibtune.features import extract_features, proposed_answer_text

    texts = sorted({proposed_answer_text(q, by_id[q.id].text, config.prompt, config.option_prefix)
                    for by_id in answers.values() for q in inputs.all})
    layers = candidate_layers_of(config, model)
    stage = FeaturesStage.of(model, config.dtype, config.device, layers=tuple(layers), token=config.features.token,
                             batch_size=config.batch_size)
    plan = stage.shards(texts)
    missing = [(key, part) for key, part in plan if not rt.store.has("features", key)]
    rt.report_shards(f"features of {model}", plan, missing)
    if missing:
        lm = rt.models.get(model)
        with rt.timed(f"features {model}"), progress_bar(f"features {model}",
                                                         sum(len(texts[p]) for _, p in missing)) as advance:
            for key, part in missing:
                feats = extract_features(lm, texts[part], layers, token=config.features.token,
                                         batch_size=config.batch_size, progress=advance)
                rt.store.put_arrays("features", key, {"features": feats}, meta={"settings": stage.settings()})
    feats = np.concatenate([rt.store.get_arrays("features", key)["features"] for key, _ in plan])
    return FeatureTable(feats, {x: i for i, x in enumerate(texts)}, tuple(layers))
