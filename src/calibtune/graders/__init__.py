"""Graders for open-ended answers: normalised matching, numbers, language-model judges, and their agreement."""

from calibtune.graders.agreement import Agreement, format_agreement, grader_agreement
from calibtune.graders.judge import (
    JUDGE_PROMPT,
    JUDGE_PROMPT_VERSION,
    HttpJudge,
    Judge,
    JudgementCache,
    LocalJudge,
    judge_all,
    judge_prompt,
    judgement_key,
    parse_judgement,
)
from calibtune.graders.match import (
    GRADERS,
    ContainsMatch,
    ExactMatch,
    Grade,
    GradeItem,
    Grader,
    NumericMatch,
    get_grader,
    grade_answers,
)
from calibtune.graders.normalize import normalize_answer, parse_number

__all__ = [
    "GRADERS", "JUDGE_PROMPT", "JUDGE_PROMPT_VERSION", "Agreement", "ContainsMatch", "ExactMatch", "Grade",
    "GradeItem", "Grader", "HttpJudge", "Judge", "JudgementCache", "LocalJudge", "NumericMatch", "format_agreement",
    "get_grader", "grade_answers", "grader_agreement", "judge_all", "judge_prompt", "judgement_key",
    "normalize_answer", "parse_judgement", "parse_number",
]
