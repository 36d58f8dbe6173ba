"""The texts models are asked with: the question prompt, and the uncertainty query.

Kept apart from the code that runs models, so that configs can name the defaults
without importing torch.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from calibtune.errors import CalibtuneError
from calibtune.records import Question

DEFAULT_PROMPT = "Question: {question}\nAnswer:"
# The paper's query: after "question + proposed answer", is the proposed answer correct?
DEFAULT_QUERY = "\nIs the proposed answer correct?\nChoices:\n(i): no\n(ii): yes\nAnswer:"
DEFAULT_OPTIONS = (" no", " yes")


# The fields a question prompt may use: the question's text and its options, one per line as the
# paper's multiple-choice format writes them ("(a): ...").
PROMPT_FIELDS = ("question", "choices")


def prompt_fields(template: str) -> list[str]:
    """The ``{fields}`` a template uses, in order (raises ValueError for an unbalanced brace)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def format_choices(choices: tuple[str, ...]) -> str:
    """A question's options as the ``{choices}`` field writes them: ``(a): first`` and so on, one per line."""
    return "\n".join(f"({string.ascii_lowercase[i] if i < 26 else i + 1}): {c}" for i, c in enumerate(choices))


def format_prompts(questions: Sequence[Question | str], template: str = DEFAULT_PROMPT) -> list[str]:
    """``format_prompt`` of each question; a plain string is a question's text, with no options."""
    return [format_prompt(q if isinstance(q, Question) else Question(f"ask/{i}", "ask", "ask", q), template)
            for i, q in enumerate(questions)]


def format_prompt(question: Question, template: str = DEFAULT_PROMPT) -> str:
    """The prompt text for a question, from a template with a ``{question}`` field and optionally ``{choices}``
    (the options, one per line; a question with none cannot fill it)."""
    if not question.choices and "choices" in prompt_fields(template):
        raise CalibtuneError(f"question {question.id} has no options, but the prompt shows {{choices}}: use a "
                             "prompt without {choices} for open-ended questions")
    return template.format(question=question.text, choices=format_choices(question.choices))
