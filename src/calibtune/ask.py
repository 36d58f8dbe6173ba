"""Ask a question, get the answer and its estimated P(correct) from a trained estimator.

The estimator folder is one that ``calibtune run`` wrote (``estimators/<method>/<E>__on__<T>``)
or that an estimator's ``save`` wrote. Its JSON names the estimator model E, the prompt
template and the answer separator; the answering model is E unless another is given
(the cross-model case: E's estimator judging T's answer).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibtune.answer import DEFAULT_PROMPT
from calibtune.errors import CalibtuneError, first_line
from calibtune.estimators.lora_head import LoraHeadEstimator
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
from calibtune.estimators.probe import ProbeEstimator
from calibtune.features import extract_features
from calibtune.forward import encode_texts
from calibtune.generate import GenerationSettings
from calibtune.models import LoadedModel, load_model
from calibtune.open_ended import OpenEndedPrompt, answer_open_ended
from calibtune.records import Question

ESTIMATOR_FILES = {"probe.json": "probe", "lora_prompt.json": "lora_prompt", "lora.json": "lora"}


@dataclass(frozen=True)
class Asked:
    """One question, the answering model's answer, and the estimator's P(correct) for it."""

    question: str
    answer: str
    p_correct: float
    answering_model: str
    estimator_model: str
    method: str


def estimator_info(folder: Path) -> tuple[str, dict]:
    """The method and saved settings of an estimator folder."""
    folder = Path(folder)
    for name, method in ESTIMATOR_FILES.items():
        path = folder / name
        if path.is_file():
            try:
                return method, json.loads(path.read_text())
            except ValueError as exc:
                raise CalibtuneError(f"{path} is not valid JSON: {first_line(exc)}") from exc
    raise CalibtuneError(f"{folder} holds no saved estimator (none of {', '.join(ESTIMATOR_FILES)})")


Scorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]


def load_scorer(folder: Path, method: str, info: dict, lm: LoadedModel) -> Scorer:
    """A function (prompts, answers) -> P(correct) backed by the saved estimator on model ``lm``."""
    prefix = info.get("option_prefix", " ")
    if method == "probe":
        probe = ProbeEstimator.load(folder)
        token = info.get("token", "last")
        return lambda prompts, answers: probe.predict_proba(
            extract_features(lm, [p + prefix + a for p, a in zip(prompts, answers)], list(probe.layers), token=token))
    if method == "lora_prompt":
        est = LoraPromptEstimator.load(folder, lm)
        return lambda prompts, answers: est.predict_proba(
            encode_queries(lm.tokenizer, prompts, [prefix + a for a in answers], est.config.query.query))
    head = LoraHeadEstimator.load(folder, lm)
    return lambda prompts, answers: head.predict_proba(
        encode_texts(lm.tokenizer, [p + prefix + a for p, a in zip(prompts, answers)]))


def answering_prompt(info: dict) -> tuple[OpenEndedPrompt, int]:
    """The prompt (template, k-shot exemplars, chat template or not) and token limit the
    estimator's training answers were generated with, as its saved settings record them."""
    template = info.get("prompt", DEFAULT_PROMPT)
    answering = info.get("answering") or {}
    exemplars = tuple(Question(id=x.get("id", f"exemplar/{i}"), dataset="exemplar", split="exemplar",
                               text=x["question"], references=(x["answer"],))
                      for i, x in enumerate(answering.get("exemplars", [])))
    prompt = OpenEndedPrompt(template, exemplars, bool(answering.get("chat_template", False)))
    return prompt, int(answering.get("max_new_tokens", 24))


def ask(folder: Path, questions: Sequence[str], answering_model: str | None = None, max_new_tokens: int | None = None,
        dtype: str = "auto", device: str = "auto") -> list[Asked]:
    """Answer each question with the answering model and score the answers with the estimator in ``folder``.

    The answer is generated the way the estimator's training answers were (same template,
    exemplars and token limit, unless ``max_new_tokens`` is given).
    """
    method, info = estimator_info(folder)
    estimator_model = info.get("estimator_model")
    if not estimator_model:
        raise CalibtuneError(f"{folder}: the estimator does not record its estimator model")
    prompt, recorded_limit = answering_prompt(info)
    template = prompt.template
    items = [Question(id=f"ask/{i}", dataset="ask", split="ask", text=q.strip(), references=("?",))
             for i, q in enumerate(questions) if q.strip()]
    if not items:
        raise CalibtuneError("no question given: pass one as an argument, or one per line on stdin")
    answerer_name = answering_model or estimator_model
    estimator_lm = load_model(estimator_model, dtype=dtype, device=device)
    answerer = estimator_lm if answerer_name == estimator_model else load_model(answerer_name, dtype, device)
    settings = GenerationSettings(max_new_tokens=max_new_tokens or recorded_limit)
    answers = [a.text for a in answer_open_ended(answerer, items, prompt, settings)]
    scorer = load_scorer(Path(folder), method, info, estimator_lm)
    prompts = [template.format(question=q.text) for q in items]
    p = scorer(prompts, answers)
    return [Asked(q.text, a, float(v), answerer_name, estimator_model, method) for q, a, v in zip(items, answers, p)]
