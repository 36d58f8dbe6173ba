"""Building the grader a study or ``calibtune grade`` names: the one place graders are made."""

from __future__ import annotations

from typing import TYPE_CHECKING

from calibtune.graders.match import get_grader
from calibtune.graders.types import Grader

if TYPE_CHECKING:
    from calibtune.config import OpenEndedSettings

LOCAL_JUDGE_TOKENS = 8


def build_grader(settings: OpenEndedSettings, dtype: str = "auto", device: str = "auto",
                 batch_size: int = 16) -> Grader:
    """The grader an ``OpenEndedSettings`` names: a rule-based one, a local-model judge, or an HTTP judge."""
    if settings.grader != "judge":
        return get_grader(settings.grader)
    judge = settings.judge
    if judge.base_url:
        from calibtune.graders.http import HttpJudge

        return HttpJudge(base_url=judge.base_url, model=judge.api_model, api_key_env=judge.api_key_env,
                         timeout=judge.timeout, max_retries=judge.max_retries)
    return local_judge(judge.model, dtype, device, batch_size, judge.max_new_tokens)


def local_judge(model: str, dtype: str = "auto", device: str = "auto", batch_size: int = 16,
                max_new_tokens: int = LOCAL_JUDGE_TOKENS) -> Grader:
    """A judge backed by a local model's greedy replies (the model is loaded on first use).

    Its identity holds the model's fingerprint, the resolved dtype and the token limit,
    so cached verdicts of another version of the judge are not reused.
    """
    from calibtune.generate import GenerationSettings, encode_prompts, generate_answers
    from calibtune.graders.judge import LocalJudge
    from calibtune.models import LoadedModel, choose_device, choose_dtype, load_model, model_fingerprint

    loaded: list[LoadedModel] = []

    def reply(prompts: list[str]) -> list[str]:
        if not loaded:
            loaded.append(load_model(model, dtype=dtype, device=device))
        lm = loaded[0]
        settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
        if getattr(lm.tokenizer, "chat_template", None):  # an instruct model: ask in its own format
            texts = [lm.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                      add_generation_prompt=True) for p in prompts]
            ids = encode_prompts(lm, texts, special_tokens=False)
        else:  # a base model: give it the start of the reply to continue
            ids = encode_prompts(lm, [p + "\nAnswer:" for p in prompts])
        return [g.text for g in generate_answers(lm, ids, settings)]

    resolved = str(choose_dtype(dtype, choose_device(device))).removeprefix("torch.")
    return LocalJudge(generate=reply, name=model, batch_size=batch_size, fingerprint=model_fingerprint(model),
                      dtype=resolved, max_new_tokens=max_new_tokens)
