"""Shared fixtures: tiny random models built from configs, with a tokenizer trained on the spot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "Question: Which planet is largest?\nAnswer: Jupiter",
    "Question: What do plants need for photosynthesis?\nAnswer: sunlight water and carbon dioxide",
    "the quick brown fox jumps over the lazy dog 0123456789 .,;:!?'\"()-",
    "Is the proposed answer correct?\nChoices:\n(i): no\n(ii): yes\nAnswer: yes",
    "Is the proposed answer correct?\nChoices:\n(i): no\n(ii): yes\nAnswer: no",
] * 5


def build_sentencepiece_style_tokenizer():
    """A tokenizer that marks word starts with "▁" (Llama, Mistral, Gemma style), with BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"])
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def build_tokenizer(bos: bool):
    """A byte-level BPE tokenizer (GPT-2 style) trained on a small corpus; adds BOS if asked."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build_model(arch: str, vocab_size: int):
    """A 2-layer randomly initialised causal LM of the given architecture."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    torch.manual_seed(0)
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "gemma": lambda: Gemma3TextConfig(**common, head_dim=8, sliding_window=64),
        "mistral": lambda: MistralConfig(**common),
        "qwen": lambda: Qwen2Config(**common),
    }
    return AutoModelForCausalLM.from_config(configs[arch]())


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Folders with tiny Llama, Gemma, Mistral and Qwen models, loadable by path."""
    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for arch in ("llama", "gemma", "mistral", "qwen"):
        # Qwen's tokenizer is byte-level BPE; Llama, Mistral and Gemma mark word starts with "▁".
        tokenizer = build_tokenizer(bos=False) if arch == "qwen" else build_sentencepiece_style_tokenizer()
        model = build_model(arch, len(tokenizer))
        folder = root / arch
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[arch] = folder
    return out


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty calibtune cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CALIBTUNE_CACHE", str(cache))
    return cache


def write_questions(path: Path, n: int = 40, options: int = 3) -> Path:
    """A synthetic multiple-choice question set as JSONL."""
    words = ["Paris", "Jupiter", "sunlight", "water", "fox", "dog", "brown", "lazy", "quick", "capital"]
    with open(path, "w") as handle:
        for i in range(n):
            choices = [words[(i + k) % len(words)] + f" {k}" for k in range(options)]
            row = {"id": f"q{i}", "question": f"Which word comes number {i}?", "choices": choices,
                   "answer": i % options}
            handle.write(json.dumps(row) + "\n")
    return path


def synthetic_run(folder: Path, n: int = 240, shift: float = 0.0, ids_from: int = 0):
    """A run folder with config, scores and every result: two models, two matrix methods and a baseline,
    three MMLU subjects. ``shift`` makes the Probe sharper; ``ids_from`` renumbers the questions."""
    import numpy as np
    import pandas as pd

    from calibtune.config import StudyConfig, dump_config
    from calibtune.results import write_results

    rng = np.random.default_rng(0)
    models = ["smollm2-135m", "gemma3-270m"]
    config = StudyConfig(name="browser <check>", models=models, train=[{"dataset": "mmlu"}], eval=[{"dataset": "mmlu"}],
                         methods=["probe", "lora_prompt", "option_confidence"], report={"bootstrap_resamples": 200})
    subjects = ["anatomy", "astronomy", "virology"]
    rows = []
    for t in models:
        y = rng.integers(0, 2, n)
        cells = [(m, e) for m in ("probe", "lora_prompt") for e in models] + [("option_confidence", t)]
        for method, e in cells:
            sharp = 0.25 + (shift if method == "probe" else 0.0)
            p = np.clip(0.5 + sharp * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
            rows.append(pd.DataFrame({"method": method, "model": e, "trained_on": t, "evaluated_on": t,
                                      "question_id": [f"mmlu/test/{subjects[i % 3]}/{i + ids_from}" for i in range(n)],
                                      "dataset": "mmlu", "subject": [subjects[i % 3] for i in range(n)],
                                      "p_correct": p, "label": y, "p_correct_ts": p, "temperature": 1.0}))
    scores = pd.concat(rows, ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_config(config))
    scores.to_parquet(folder / "scores.parquet", index=False)
    write_results(folder, config, scores, {"n_eval": n})
    return config
