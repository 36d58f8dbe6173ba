"""The 7B study's code path without 7B weights: tiny random Llama and Mistral (with a sliding window) laid
out as hub snapshots, loaded by hub id, offline, in bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibtune.models import load_model, model_fingerprint
from conftest import build_sentencepiece_style_tokenizer

LLAMA2_CHAT = ("{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %} "
               "{{ m.content }}</s>{% endif %}{% endfor %}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub cache with tiny random test-org/tiny-llama-2 and test-org/tiny-mistral (sliding window 24)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    root = tmp_path_factory.mktemp("hub")
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    for name, config in (("tiny-llama-2", LlamaConfig(num_key_value_heads=4, **common)),
                         ("tiny-mistral", MistralConfig(num_key_value_heads=2, sliding_window=24, **common))):
        tokenizer = build_sentencepiece_style_tokenizer()
        tokenizer.chat_template = LLAMA2_CHAT
        config.vocab_size = len(tokenizer)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        repo = root / f"models--test-org--{name}"
        snapshot = repo / "snapshots" / ("c" * 40)
        model.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("c" * 40)
    return root


@pytest.fixture
def offline_hub(hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setitem(huggingface_hub.is_offline_mode.__globals__, "HF_HUB_OFFLINE", True)
    return hub


@pytest.mark.parametrize("name", ["test-org/tiny-llama-2", "test-org/tiny-mistral"])
def test_a_hub_model_loads_offline_in_bf16_with_what_the_study_needs(offline_hub, name):
    from calibtune.estimator_settings import LoraPromptConfig
    from calibtune.estimators.adapters import target_modules
    from calibtune.estimators.query import option_token_ids
    from calibtune.generate import GenerationSettings, generate_answers
    from calibtune.open_ended import OpenEndedPrompt
    from calibtune.prompts import DEFAULT_OPTIONS, DEFAULT_QUERY
    from calibtune.records import Question

    lm = load_model(name, dtype="bfloat16", device="cpu")
    assert lm.dtype == torch.bfloat16 and next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.device == torch.device("cpu") and next(lm.model.parameters()).device.type == "cpu"
    assert model_fingerprint(name) == f"hub:{name}@{'c' * 40}"
    assert target_modules(lm, LoraPromptConfig()) == ["q_proj", "v_proj"]
    no, yes = option_token_ids(lm.tokenizer, DEFAULT_QUERY, DEFAULT_OPTIONS)
    assert lm.tokenizer.decode([no]).strip() == "no" and lm.tokenizer.decode([yes]).strip() == "yes"
    question = Question("q/1", "q", "s", "Which planet?", references=("Jupiter",))
    (ids,) = OpenEndedPrompt("Question: {question}\nAnswer:", chat_template=True).texts(lm, [question])
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "Which planet?"}], tokenize=False,
                                            add_generation_prompt=True)
    assert text == "[INST] Which planet? [/INST]"  # the model's own chat format
    assert ids == lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    # generation pads on the left, and a prompt alone or padded in a batch gets the same greedy answer
    short, longer = ids, lm.tokenizer("Question: the quick brown fox jumps over the lazy dog\nAnswer:")["input_ids"]
    settings = GenerationSettings(max_new_tokens=4, stop="")
    alone = generate_answers(lm, [short], settings)[0]
    batched = generate_answers(lm, [longer, short], settings)[1]
    assert alone.token_ids == batched.token_ids


def test_mistral_options_beyond_the_sliding_window_are_read_branch_by_branch(offline_hub):
    from calibtune.forward import Tree, tree_pass

    lm = load_model("test-org/tiny-mistral", dtype="float32")
    assert lm.model.config.sliding_window == 24
    text = "Question: " + "the quick brown fox jumps over the lazy dog " * 3 + "?\nAnswer:"
    context = lm.tokenizer(text)["input_ids"]
    options = [tuple(lm.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in (" Paris", " the lazy dog")]
    assert len(context) > 24
    out = tree_pass(lm, [Tree(tuple(context), tuple(options))])
    for option, got in zip(options, out.logprobs[0]):
        ids = torch.tensor([list(context) + list(option)], device=lm.device)
        with torch.no_grad():  # the model's own sliding-window attention over the whole sequence
            logp = torch.log_softmax(lm.model(ids).logits[0].float(), -1)
        expected = sum(float(logp[len(context) + i - 1, t]) for i, t in enumerate(option))
        assert got == pytest.approx(expected, abs=1e-4)
    short = lm.tokenizer("Question: Which?\nAnswer:")["input_ids"]  # fits the window: one packed row
    packed = tree_pass(lm, [Tree(tuple(short), tuple(options))]).logprobs[0]
    alone = [tree_pass(lm, [Tree(tuple(short), (o,))]).logprobs[0][0] for o in options]
    np.testing.assert_allclose(packed, alone, atol=1e-4)
