"""Open-ended generation speed of each bundled model: greedy, batched, KV cache, stop at newline.

    .venv/bin/python benchmarks/generation_throughput.py [N_QUESTIONS] [BATCH_SIZE]

Prints answer tokens per second (tokens of the answers kept, up to the newline) and
questions per second, on the first N TriviaQA questions (default 128, batch 16).
"""

from __future__ import annotations

import sys
import time

from calibtune.data import load_questions
from calibtune.generate import GenerationSettings
from calibtune.models import BUNDLED, load_model
from calibtune.open_ended import OpenEndedPrompt, answer_open_ended


def main(n: int = 128, batch_size: int = 16) -> None:
    questions = load_questions("trivia_qa")[:n]
    settings = GenerationSettings(max_new_tokens=24, batch_size=batch_size)
    prompt = OpenEndedPrompt("Question: {question}\nAnswer:")
    for name in BUNDLED:
        lm = load_model(name)
        answer_open_ended(lm, questions[:batch_size], prompt, settings, progress=lambda k: None)  # warm-up
        start = time.perf_counter()
        answers = answer_open_ended(lm, questions, prompt, settings, progress=lambda k: None)
        seconds = time.perf_counter() - start
        tokens = sum(len(a.token_logprobs) for a in answers)
        print(f"{name}: {n} questions, {tokens} answer tokens in {seconds:.1f} s: {tokens / seconds:.0f} tokens/s, "
              f"{n / seconds:.1f} questions/s ({lm.dtype}, batch {batch_size})")


if __name__ == "__main__":
    main(*(int(x) for x in sys.argv[1:3]))
