"""Graders for answers: normalised matching, numbers, language-model judges, and their agreement.

``grade_answers`` is the one way answers are graded; ``build_grader`` the one way a
grader is made from settings.
"""

from calibtune.graders.agreement import Agreement, format_agreement, grader_agreement
from calibtune.graders.build import build_grader, local_judge
from calibtune.graders.cache import JudgementCache
from calibtune.graders.grade import CHOICE_GRADER, count_undecided, grade_answers
from calibtune.graders.http import HttpJudge
from calibtune.graders.judge import (
    JUDGE_PROMPT,
    JUDGE_PROMPT_VERSION,
    Judge,
    LocalJudge,
    judge_all,
    judge_prompt,
    judgement_key,
    parse_judgement,
)
from calibtune.graders.match import GRADERS, ContainsMatch, ExactMatch, NumericMatch, get_grader
from calibtune.graders.normalize import normalize_answer, parse_number
from calibtune.graders.types import Grade, GradeItem, Grader

__all__ = [
    "CHOICE_GRADER", "GRADERS", "JUDGE_PROMPT", "JUDGE_PROMPT_VERSION", "Agreement", "ContainsMatch", "ExactMatch",
    "Grade", "GradeItem", "Grader", "HttpJudge", "Judge", "JudgementCache", "LocalJudge", "NumericMatch",
    "build_grader", "count_undecided", "format_agreement", "get_grader", "grade_answers", "grader_agreement",
    "judge_all", "judge_prompt", "judgement_key", "local_judge", "normalize_answer", "parse_judgement",
    "parse_number",
]
