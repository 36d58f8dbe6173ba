"""The bundled question sets other than MMLU: where each lives and how rows map.

Every multiple choice converter returns the question text (what follows ``Question: ``
in a cloze prompt), the options' texts and the gold index; the open-ended ones (TriviaQA,
NQ-open, GSM8K) return the question and its reference answers. Texts are stripped of surrounding
whitespace (PIQA has ~230 options with stray leading/trailing spaces). No bundled row
is unusable, so none is skipped: every split has as many questions as rows (or docs).
"""

from __future__ import annotations

import random
import re
from typing import Any

from calibtune.data.errors import BundleFormatError
from calibtune.data.readers import ArrowSplit, RequestsSplit
from calibtune.data.spec import OPEN_ENDED, DatasetSpec, Item

CLOZE_PREFIX = "Question: "
CLOZE_SUFFIX = "\nAnswer:"


def labelled_gold(labels: list[str], key: str, where: str) -> int:
    """Index of answer label ``key`` among ``labels`` ("A".."E" or "1".."4" in ARC)."""
    try:
        return labels.index(key)
    except ValueError:
        raise BundleFormatError(
            f"{where}: answer key {key!r} not among labels {labels}"
        ) from None


def labelled_choices(row: dict[str, Any], index: int, text_field: str) -> Item:
    """ARC / OpenBookQA / CommonsenseQA rows: ``choices.text`` and ``choices.label``,
    ``answerKey`` a label."""
    choices = row["choices"]
    return Item(
        key=str(row["id"]),
        text=row[text_field].strip(),
        choices=tuple(t.strip() for t in choices["text"]),
        gold=labelled_gold(
            list(choices["label"]), row["answerKey"], f"row {index} ({row['id']})"
        ),
    )


def question_field(row: dict[str, Any], index: int) -> Item:
    """Rows whose question is in ``question`` (ARC, CommonsenseQA)."""
    return labelled_choices(row, index, "question")


def question_stem_field(row: dict[str, Any], index: int) -> Item:
    """Rows whose question is in ``question_stem`` (OpenBookQA)."""
    return labelled_choices(row, index, "question_stem")


def cloze_doc(doc: dict[str, Any], index: int) -> Item:
    """An oe-eval RC doc: ``query`` is ``Question: ...\\nAnswer:``, ``choices``, ``gold``."""
    query = doc["query"]
    if not (query.startswith(CLOZE_PREFIX) and query.endswith(CLOZE_SUFFIX)):
        raise BundleFormatError(
            f"doc {doc.get('id')!r}: query is not 'Question: ...\\nAnswer:'"
        )
    return Item(
        key=str(doc["id"]),
        text=query[len(CLOZE_PREFIX) : -len(CLOZE_SUFFIX)].strip(),
        choices=tuple(c.strip() for c in doc["choices"]),
        gold=int(doc["gold"]),
    )


def sciq(row: dict[str, Any], index: int) -> Item:
    """SciQ stores the right answer first; shuffle the four options with a seed that
    depends only on the row index, so the order is the same on every run and machine."""
    options = [
        row["correct_answer"],
        row["distractor1"],
        row["distractor2"],
        row["distractor3"],
    ]
    order = list(range(len(options)))
    random.Random(f"sciq-{index}").shuffle(order)
    return Item(
        key=str(index),
        text=row["question"].strip(),
        choices=tuple(options[k].strip() for k in order),
        gold=order.index(0),
    )


def siqa(row: dict[str, Any], index: int) -> Item:
    """Social IQa: context and question; ``answerA..C``; ``label`` "1".."3"."""
    return Item(
        key=str(index),
        text=f"{row['context'].strip()} {row['question'].strip()}",
        choices=tuple(row[f"answer{k}"].strip() for k in "ABC"),
        gold=int(row["label"]) - 1,
    )


def piqa(row: dict[str, Any], index: int) -> Item:
    """PIQA: ``goal``; ``sol1``/``sol2``; ``label`` 0/1."""
    return Item(
        key=str(index),
        text=row["goal"].strip(),
        choices=(row["sol1"].strip(), row["sol2"].strip()),
        gold=int(row["label"]),
    )


def winogrande(row: dict[str, Any], index: int) -> Item:
    """WinoGrande: ``sentence`` with a blank ``_``; ``option1``/``option2``; ``answer`` "1"/"2"."""
    return Item(
        key=str(index),
        text=row["sentence"].strip(),
        choices=(row["option1"].strip(), row["option2"].strip()),
        gold=int(row["answer"]) - 1,
    )


def hellaswag_clean(text: str) -> str:
    """Remove the WikiHow markup (``[title]``, ``[step]``, ...) as lm-eval-harness does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ").strip()


def hellaswag(row: dict[str, Any], index: int) -> Item:
    """HellaSwag: ``ctx``; four ``endings``; ``label`` "0".."3". The row index is the
    key because the native ``ind`` repeats (433 duplicates in validation)."""
    return Item(
        key=str(index),
        text=hellaswag_clean(row["ctx"]),
        choices=tuple(hellaswag_clean(e) for e in row["endings"]),
        gold=int(row["label"]),
    )


def boolq(row: dict[str, Any], index: int) -> Item:
    """BoolQ: passage, then the question (stored lower case without "?"); no / yes."""
    return Item(
        key=str(index),
        text=f"{row['passage'].strip()}\n{row['question'].strip()}?",
        choices=("no", "yes"),
        gold=int(bool(row["answer"])),
    )


def copa(row: dict[str, Any], index: int) -> Item:
    """COPA: premise and "What was the cause/effect?"; ``choice1``/``choice2``; ``label``."""
    return Item(
        key=str(row["idx"]),
        text=f"{row['premise'].strip()} What was the {row['question']}?",
        choices=(row["choice1"].strip(), row["choice2"].strip()),
        gold=int(row["label"]),
    )


def trivia_qa(row: dict[str, Any], index: int) -> Item:
    """TriviaQA (no context): ``answer.value`` first, then its ``aliases``."""
    answer = row["answer"]
    refs = [answer["value"], *answer["aliases"]]
    return Item(key=str(row["question_id"]), text=row["question"].strip(), choices=(), gold=-1,
                references=tuple(dict.fromkeys(r.strip() for r in refs if r and r.strip())))


def nq_open(row: dict[str, Any], index: int) -> Item:
    """NQ-open: a lower-case question without "?"; ``answer`` is the list of accepted answers."""
    question = row["question"].strip()
    return Item(key=str(index), text=question[0].upper() + question[1:] + "?", choices=(), gold=-1,
                references=tuple(a.strip() for a in row["answer"]))


def gsm8k(doc: dict[str, Any], index: int) -> Item:
    """GSM8K: the word problem; the reference is the final number (``short_answer``)."""
    return Item(key=str(doc["id"]), text=doc["question"].strip(), choices=(), gold=-1,
                references=(str(doc["short_answer"]).strip(),))


BUILTIN = (
    DatasetSpec(
        name="arc_easy",
        description="ARC-Easy: grade-school science questions, 3-5 options (AI2 Reasoning Challenge)",
        default_split="test",
        splits={
            "validation": ArrowSplit("ai2_arc/ARC-Easy/validation", question_field),
            "test": RequestsSplit("arc_easy", "test_rc_5shot", cloze_doc),
        },
    ),
    DatasetSpec(
        name="arc_challenge",
        description="ARC-Challenge: harder grade-school science questions, 3-5 options",
        default_split="test",
        splits={
            "validation": ArrowSplit(
                "ai2_arc/ARC-Challenge/validation", question_field
            ),
            "test": RequestsSplit("arc_challenge", "test_rc_5shot", cloze_doc),
        },
    ),
    DatasetSpec(
        name="sciq",
        description="SciQ: crowd-sourced science exam questions, 4 options (shuffled, fixed seed)",
        default_split="validation",
        splits={"validation": ArrowSplit("sciq/none/validation", sciq)},
    ),
    DatasetSpec(
        name="openbookqa",
        description="OpenBookQA: elementary science questions needing common knowledge, 4 options",
        default_split="test",
        splits={
            "validation": ArrowSplit("openbookqa/main/validation", question_stem_field),
            "test": RequestsSplit("openbookqa", "test_rc_5shot", cloze_doc),
        },
    ),
    DatasetSpec(
        name="commonsense_qa",
        description="CommonsenseQA: everyday-knowledge questions, 5 options",
        default_split="validation",
        splits={
            "validation": ArrowSplit(
                "tau/commonsense_qa/none/validation", question_field
            )
        },
    ),
    DatasetSpec(
        name="siqa",
        description="Social IQa: reasoning about people's motives and reactions, 3 options",
        default_split="validation",
        splits={"validation": ArrowSplit("social_i_qa/none/validation", siqa)},
    ),
    DatasetSpec(
        name="piqa",
        description="PIQA: physical common sense, pick the better of 2 solutions to a goal",
        default_split="validation",
        splits={"validation": ArrowSplit("piqa/plain_text/validation", piqa)},
    ),
    DatasetSpec(
        name="winogrande",
        description="WinoGrande (XL): fill the blank in a sentence with 1 of 2 options",
        default_split="validation",
        splits={
            "validation": ArrowSplit("winogrande/winogrande_xl/validation", winogrande)
        },
    ),
    DatasetSpec(
        name="hellaswag",
        description="HellaSwag: choose the most plausible of 4 continuations",
        default_split="validation",
        splits={"validation": ArrowSplit("hellaswag/none/validation", hellaswag)},
    ),
    DatasetSpec(
        name="boolq",
        description="BoolQ: yes/no questions about a Wikipedia passage",
        default_split="validation",
        splits={"validation": ArrowSplit("boolq/none/validation", boolq)},
    ),
    DatasetSpec(
        name="copa",
        description="COPA: pick the more plausible cause or effect of a premise, 2 options",
        default_split="validation",
        splits={"validation": ArrowSplit("super_glue/copa/validation", copa)},
    ),
    DatasetSpec(
        name="trivia_qa",
        description="TriviaQA (no context): open-ended trivia questions with answer aliases",
        default_split="validation",
        splits={"validation": ArrowSplit("trivia_qa/rc.wikipedia.nocontext/validation", trivia_qa)},
        kind=OPEN_ENDED,
    ),
    DatasetSpec(
        name="nq_open",
        description="NQ-open: open-ended Google search questions with short answers",
        default_split="validation",
        splits={"validation": ArrowSplit("nq_open/none/validation", nq_open)},
        kind=OPEN_ENDED,
    ),
    DatasetSpec(
        name="gsm8k",
        description="GSM8K: grade-school math word problems with a numeric answer (open-ended)",
        default_split="test",
        splits={"test": RequestsSplit("gsm8k", "gold_bpb_5shot", gsm8k)},
        kind=OPEN_ENDED,
    ),
)
