"""Open-ended answers: prompts (k-shot or chat template), generation, and the baselines read off them.

The answering model writes its own answer after ``Question: ...\\nAnswer:`` (optionally
after k exemplars with their reference answers, or inside its chat template). The answer's
token log-probabilities are kept for the likelihood baselines; the verbalized baseline asks
the model for a probability, and sampling consistency compares sampled answers with the
greedy one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from calibtune.errors import CalibtuneError
from calibtune.generate import GenerationSettings, encode_prompts, generate_answers, sample_answers
from calibtune.models import LoadedModel
from calibtune.progress import progress_bar
from calibtune.prompts import format_prompt
from calibtune.records import Answer, Question
from calibtune.verbalized import VERBALIZED_PROMPT, parse_confidence, verbalized_prompt

Progress = Callable[[int], None]


def references_of(question: Question) -> tuple[str, ...]:
    """The reference answers (an open-ended question's aliases, or a multiple choice question's gold
    option); a question with none is an error, since an exemplar must show its answer."""
    references = question.reference_answers()
    if not references:
        raise CalibtuneError(f"question {question.id} has no reference answer")
    return references


@dataclass(frozen=True)
class OpenEndedPrompt:
    """How a question is put to the answering model: template, exemplars, chat template or not."""

    template: str
    exemplars: tuple[Question, ...] = ()
    chat_template: bool = False

    def texts(self, lm: LoadedModel, questions: Sequence[Question]) -> list[list[int]]:
        """Token ids of each question's prompt."""
        if self.chat_template:
            if not getattr(lm.tokenizer, "chat_template", None):
                raise CalibtuneError(f"model '{lm.name}' has no chat template to ask it in; "
                                     "set open_ended.chat_template: false (or drop --chat-template)")
            texts = [lm.tokenizer.apply_chat_template(self.messages(q), tokenize=False, add_generation_prompt=True)
                     for q in questions]
            return encode_prompts(lm, texts, special_tokens=False)
        return encode_prompts(lm, [self.plain(q) for q in questions])

    def plain(self, question: Question) -> str:
        """The k-shot text prompt: each exemplar with its first reference, then the question."""
        shots = "".join(f"{format_prompt(x, self.template)} {references_of(x)[0]}\n\n" for x in self.exemplars)
        return shots + format_prompt(question, self.template)

    def messages(self, question: Question) -> list[dict[str, str]]:
        """The chat version: exemplars as earlier user/assistant turns."""
        out: list[dict[str, str]] = []
        for x in self.exemplars:
            out += [{"role": "user", "content": x.text}, {"role": "assistant", "content": references_of(x)[0]}]
        return out + [{"role": "user", "content": question.text}]


def answer_open_ended(lm: LoadedModel, questions: Sequence[Question], prompt: OpenEndedPrompt,
                      settings: GenerationSettings, progress: Progress | None = None) -> list[Answer]:
    """The model's greedy (ungraded) answer to each question, with its token log-probabilities."""
    ids = prompt.texts(lm, questions)
    names = [q.id for q in questions]
    if progress is None:
        with progress_bar(f"generate {lm.name}", len(questions)) as advance:
            generated = generate_answers(lm, ids, settings, advance, names)
    else:
        generated = generate_answers(lm, ids, settings, progress, names)
    return [Answer(question_id=q.id, model=lm.name, text=g.text, logprob=float(sum(g.token_logprobs)),
                   token_logprobs=tuple(map(float, g.token_logprobs))) for q, g in zip(questions, generated)]


def likelihood_confidence(answer: Answer) -> float:
    """exp(summed log-probability of the answer): the sequence's probability."""
    return float(math.exp(min(0.0, answer.logprob)))


def perplexity_confidence(answer: Answer) -> float:
    """exp(mean token log-probability) = 1 / perplexity; multiple choice answers use the chosen option's mean."""
    if answer.choice is not None and answer.option_logprob_mean:
        mean = answer.option_logprob_mean[answer.choice]
    elif answer.token_logprobs:
        mean = float(np.mean(answer.token_logprobs))
    else:
        return 0.0  # an empty answer: no token vouches for it
    return float(math.exp(min(0.0, mean)))


def verbalized_confidence(lm: LoadedModel, questions: Sequence[Question], answers: Sequence[Answer],
                          max_new_tokens: int = 8, batch_size: int = 16,
                          template: str = VERBALIZED_PROMPT) -> tuple[np.ndarray, list[str]]:
    """The model's stated probability that its answer is right (NaN where the reply has none), and the replies."""
    texts = [verbalized_prompt(q.text, a.text, template) for q, a in zip(questions, answers)]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    with progress_bar(f"verbalized {lm.name}", len(texts)) as advance:
        replies = generate_answers(lm, encode_prompts(lm, texts), settings, advance)
    values = [parse_confidence(r.text) for r in replies]
    return np.array([np.nan if v is None else v for v in values], dtype=float), [r.text for r in replies]


def sampling_consistency(lm: LoadedModel, questions: Sequence[Question], answers: Sequence[Answer],
                         prompt: OpenEndedPrompt, equivalent: Callable[[str, str], bool], k: int,
                         temperature: float, seed: int, settings: GenerationSettings) -> np.ndarray:
    """Share of ``k`` sampled answers that ``equivalent`` judges the same as the greedy answer."""
    ids = prompt.texts(lm, questions)
    with progress_bar(f"sample {lm.name} x{k}", len(questions)) as advance:
        samples = sample_answers(lm, ids, k, temperature, seed, settings, advance)
    return np.array([np.mean([equivalent(s.text, a.text) for s in group]) for group, a in zip(samples, answers)])


def equivalence(grader) -> Callable[[str, str], bool]:
    """Whether a sampled answer matches the greedy one, by the study's rule-based grader.

    A judge is not asked k times per question: sampling consistency then uses exact match.
    """
    from calibtune.graders import get_grader

    rule = grader if not hasattr(grader, "grade_batch") else get_grader("exact")
    return lambda sample, greedy: bool(greedy.strip()) and bool(rule.grade(sample, (greedy,)).correct)
