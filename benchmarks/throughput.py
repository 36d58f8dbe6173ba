"""Answering (cloze) and feature-extraction throughput of each bundled model.

Usage: .venv/bin/python benchmarks/throughput.py [--questions 200] [--batch-size 16]
Prints questions/s and tokens/s for cloze answering (shared-prefix and pairwise), and
texts/s and tokens/s for hidden-state features, on ARC-Easy test questions.
"""

from __future__ import annotations

import argparse
import time

from calibtune.answer import ClozeSettings, answer_multiple_choice
from calibtune.prompts import format_prompt
from calibtune.data import load_questions
from calibtune.features import candidate_layers, extract_features, proposed_answer_text
from calibtune.forward import continuation_logprobs, encode_continuations
from calibtune.models import BUNDLED, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--models", nargs="*", default=list(BUNDLED))
    args = parser.parse_args()
    questions = load_questions("arc_easy", split="test")[: args.questions]
    for name in args.models:
        t0 = time.perf_counter()
        lm = load_model(name)
        load_s = time.perf_counter() - t0
        settings = ClozeSettings(batch_size=args.batch_size)
        t0 = time.perf_counter()
        answers = answer_multiple_choice(lm, questions, settings)
        shared_s = time.perf_counter() - t0
        contexts = [format_prompt(q) for q in questions for _ in q.choices]
        conts = [" " + c for q in questions for c in q.choices]
        pairs = encode_continuations(lm.tokenizer, contexts, conts)
        t0 = time.perf_counter()
        continuation_logprobs(lm, pairs, batch_size=args.batch_size)
        pair_s = time.perf_counter() - t0
        pair_tokens = sum(len(p.ids) for p in pairs)
        texts = [proposed_answer_text(q, a.text, settings.prompt) for q, a in zip(questions, answers)]
        text_tokens = sum(len(x) for x in lm.tokenizer(texts)["input_ids"])
        t0 = time.perf_counter()
        extract_features(lm, texts, candidate_layers(lm.num_layers), batch_size=args.batch_size)
        feat_s = time.perf_counter() - t0
        n = len(questions)
        print(f"{name} ({lm.dtype}, load {load_s:.1f} s)")
        print(f"  cloze, shared prefix : {n / shared_s:6.1f} questions/s  ({shared_s:.1f} s)")
        print(f"  cloze, pairwise      : {n / pair_s:6.1f} questions/s  "
              f"{pair_tokens / pair_s:7.0f} tokens/s ({pair_s:.1f} s)")
        print(f"  features (4 layers)  : {n / feat_s:6.1f} texts/s      "
              f"{text_tokens / feat_s:7.0f} tokens/s ({feat_s:.1f} s)")


if __name__ == "__main__":
    main()
