"""Answering multiple-choice questions by cloze scoring.

Each option's text is scored as the continuation of the prompt; the answer is the option
with the highest length-normalised (per-token) log-likelihood, or the highest summed one
when ``select="sum"``. Letter answers (A/B/C/D) are at chance for small models; cloze
scoring is not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from calibtune.forward import DEFAULT_TOKEN_BUDGET, Tree, tree_pass
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar
from calibtune.prompts import DEFAULT_PROMPT, format_prompt
from calibtune.records import Answer, Question


@dataclass(frozen=True)
class ClozeSettings:
    """How a multiple-choice question is put to the model and its answer chosen."""

    prompt: str = DEFAULT_PROMPT
    option_prefix: str = " "
    select: str = "mean"  # "mean" (length-normalised) or "sum"
    batch_size: int = 64  # questions per forward pass, at most
    token_budget: int = DEFAULT_TOKEN_BUDGET  # tokens per forward pass, padding included


def answer_multiple_choice(
    lm: LoadedModel, questions: Sequence[Question], settings: ClozeSettings = ClozeSettings(),
    progress: Callable[[int], None] | None = None,
) -> list[Answer]:
    """Score every option of every question and return the model's (ungraded) answers.

    ``progress(n)`` is called as questions finish; without it a progress bar is shown.
    """
    return cloze_answers(lm, questions, settings, progress)[0]


def cloze_answers(
    lm: LoadedModel, questions: Sequence[Question], settings: ClozeSettings = ClozeSettings(),
    progress: Callable[[int], None] | None = None, layers: Sequence[int] | None = None,
) -> tuple[list[Answer], list[np.ndarray] | None]:
    """The model's (ungraded) answers and, with ``layers``, its hidden states at the last token of every option of
    each question (``[n_options, len(layers), hidden]`` per question): what the Probe reads of "question +
    answer" for whichever option an answering model chose, from the same pass (``chosen_features`` picks them).

    Each question is one tree: its prompt, then every option (``calibtune.forward.tree_pass``).
    """
    if settings.select not in ("mean", "sum"):
        raise ValueError(f"unknown selection '{settings.select}': use mean or sum")
    for question in questions:
        if not question.is_multiple_choice:
            raise ValueError(f"question {question.id} has no choices")
    contexts = lm.tokenizer([format_prompt(q, settings.prompt) for q in questions])["input_ids"] if questions else []
    options = [lm.tokenizer([settings.option_prefix + c for c in q.choices], add_special_tokens=False)["input_ids"]
               for q in questions]
    for question, opts in zip(questions, options):
        for text, ids in zip(question.choices, opts):
            if not ids:
                raise ValueError(f"question {question.id}: option {text!r} has no tokens")
    trees = [Tree(tuple(c), tuple(tuple(o) for o in opts)) for c, opts in zip(contexts, options)]
    names = [q.id for q in questions]

    def read(advance):
        return tree_pass(lm, trees, layers=layers, token_budget=settings.token_budget, max_rows=settings.batch_size,
                         progress=advance, names=names)

    if progress is None:
        with progress_bar(f"answer  {lm.name}", len(questions)) as advance:
            out = read(advance)
    else:
        out = read(progress)
    answers = []
    for question, q_sum, opts in zip(questions, out.logprobs, options):
        q_mean = q_sum / np.array([len(o) for o in opts])
        choice = int(np.argmax(q_mean if settings.select == "mean" else q_sum))
        answers.append(Answer(
            question_id=question.id, model=lm.name, text=question.choices[choice], logprob=float(q_sum[choice]),
            choice=choice, option_logprob_sum=tuple(map(float, q_sum)), option_logprob_mean=tuple(map(float, q_mean)),
        ))
    return answers, out.features


def chosen_features(option_features: Sequence[np.ndarray], choices: Sequence[int]) -> np.ndarray:
    """Each question's features of one option (``choices[i]`` of question i): ``[n, layers, hidden]``."""
    return np.stack([f[k] for f, k in zip(option_features, choices)])


def option_confidence(answer: Answer, select: str = "mean") -> float:
    """The chosen option's share of probability across the options (the paper's "Logits" baseline).

    A softmax over the same per-option scores that chose the answer.
    """
    scores = np.asarray(answer.option_logprob_mean if select == "mean" else answer.option_logprob_sum)
    shifted = np.exp(scores - scores.max())
    return float(shifted[answer.choice] / shifted.sum())
