"""Ask a question, get the answer and its estimated P(correct) from a trained estimator.

The estimator folder is one that ``calibtune run`` wrote (``estimators/<method>/<E>__on__<T>``)
or that an estimator's ``save`` wrote. Its JSON names the estimator model E (by a
reference that loads from any folder, checked against the recorded fingerprint) and how
its training answers were made; the question is answered the same way: by cloze
scoring among the options given, for an estimator trained on multiple-choice answers,
else by generation with the recorded template, exemplars and token limit. The answering
model is T, the one whose answers the estimator was trained on (``trained_on``; E when it records none),
unless another is given.
P(correct) is scaled by the temperature the study fitted for the cell (``temperature.json``
beside the estimator), so that it is the study's ``p_correct_ts``; the estimator's own is kept beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from calibtune.errors import CalibtuneError
from calibtune.estimators import estimator_info, load_estimator, study_temperature
from calibtune.estimators.base import check_estimator_model
from calibtune.models import LoadedModel, load_model
from calibtune.prompts import DEFAULT_PROMPT
from calibtune.records import Question


@dataclass(frozen=True)
class Asked:
    """One question, the answering model's answer, and the estimator's P(correct) for it: ``p_correct`` after
    the study's temperature (``temperature``; None when none was recorded or it was not asked for, and then
    ``p_correct`` is ``p_correct_raw``), ``p_correct_raw`` as the estimator gives it."""

    question: str
    answer: str
    p_correct: float
    answering_model: str
    estimator_model: str
    method: str
    p_correct_raw: float
    temperature: float | None
    temperature_fitted_on: str | None


def answering_prompt(info: dict):
    """The open-ended prompt (template, k-shot exemplars, chat template or not) and token limit the
    estimator's training answers were generated with, as its saved settings record them."""
    from calibtune.open_ended import OpenEndedPrompt

    template = info.get("prompt", DEFAULT_PROMPT)
    answering = info.get("answering") or {}
    exemplars = tuple(Question(id=x.get("id", f"exemplar/{i}"), dataset="exemplar", split="exemplar",
                               text=x["question"], references=(x["answer"],))
                      for i, x in enumerate(answering.get("exemplars", [])))
    prompt = OpenEndedPrompt(template, exemplars, bool(answering.get("chat_template", False)))
    return prompt, int(answering.get("max_new_tokens", 24))


def _answers(lm: LoadedModel, info: dict, items: list[Question], max_new_tokens: int | None) -> list[str]:
    """The answering model's answers, made the way the estimator's training answers were."""
    if info.get("task") == "multiple_choice":
        from calibtune.answer import ClozeSettings, answer_multiple_choice

        settings = ClozeSettings(prompt=info.get("prompt", DEFAULT_PROMPT),
                                 option_prefix=info.get("option_prefix", " "),
                                 select=(info.get("answering") or {}).get("select", "mean"))
        return [a.text for a in answer_multiple_choice(lm, items, settings)]
    from calibtune.generate import GenerationSettings
    from calibtune.open_ended import answer_open_ended

    prompt, recorded_limit = answering_prompt(info)
    settings = GenerationSettings(max_new_tokens=max_new_tokens or recorded_limit)
    return [a.text for a in answer_open_ended(lm, items, prompt, settings)]


def ask(folder: Path, questions: Sequence[str], answering_model: str | None = None, max_new_tokens: int | None = None,
        dtype: str = "auto", device: str = "auto", choices: Sequence[str] = (),
        temperature: bool = True) -> list[Asked]:
    """Answer each question with the answering model and score the answers with the estimator in ``folder``,
    scaled by the study's temperature for the cell when one is recorded and ``temperature`` is set.

    An estimator trained on multiple-choice answers needs ``choices`` (the question's options):
    its answers were chosen among options by cloze scoring, and a free-generated answer is not
    what it learned to judge. An estimator trained on open-ended answers takes none.
    """
    method, info = estimator_info(folder)
    scaling = study_temperature(folder) if temperature else None  # a bad file fails before any model loads
    estimator_model = info.get("estimator_model")
    if not estimator_model:
        raise CalibtuneError(f"{folder}: the estimator does not record its estimator model")
    multiple_choice = info.get("task") == "multiple_choice"
    if multiple_choice and not choices:
        raise CalibtuneError(f"{folder} was trained on multiple-choice answers (an option chosen by cloze "
                             "scoring), not on free answers: give the question's options with --choice (repeat it)")
    if choices and not multiple_choice:
        raise CalibtuneError(f"{folder} was trained on open-ended answers: ask without --choice")
    items = [Question(id=f"ask/{i}", dataset="ask", split="ask", text=q.strip(), choices=tuple(choices),
                      gold=0 if choices else None, references=() if choices else ("?",))
             for i, q in enumerate(questions) if q.strip()]
    if not items:
        raise CalibtuneError("no question given: pass one as an argument, or one per line on stdin")
    estimator_lm = load_model(estimator_model, dtype=dtype, device=device)
    check_estimator_model(info, estimator_lm, folder)
    # the estimator learned to judge T's answers, and the study's temperature for the cell was fitted on them
    answerer_name = answering_model or info.get("trained_on") or estimator_model
    answerer = estimator_lm if answerer_name == estimator_model else load_model(answerer_name, dtype, device)
    answers = _answers(answerer, info, items, max_new_tokens)  # before adapters go onto the estimator model
    raw = load_estimator(Path(folder), estimator_lm).estimate(items, answers)
    p = raw if scaling is None else scaling.apply(raw)
    t, fitted_on = (None, None) if scaling is None else (scaling.temperature, scaling.fitted_on)
    return [Asked(q.text, a, float(v), answerer_name, estimator_model, method, float(r), t, fitted_on)
            for q, a, v, r in zip(items, answers, p, raw)]
