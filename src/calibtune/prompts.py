"""The texts models are asked with: the question prompt, and the uncertainty query.

Kept apart from the code that runs models, so that configs can name the defaults
without importing torch.
"""

from __future__ import annotations

from calibtune.records import Question

DEFAULT_PROMPT = "Question: {question}\nAnswer:"
# The paper's query: after "question + proposed answer", is the proposed answer correct?
DEFAULT_QUERY = "\nIs the proposed answer correct?\nChoices:\n(i): no\n(ii): yes\nAnswer:"
DEFAULT_OPTIONS = (" no", " yes")


def format_prompt(question: Question, template: str = DEFAULT_PROMPT) -> str:
    """The prompt text for a question, from a template with a ``{question}`` field."""
    return template.format(question=question.text)
