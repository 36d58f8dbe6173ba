"""Loading, cloze scoring against a hand computation, features, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from calibtune.bundled import BUNDLED
from calibtune.errors import CalibtuneError
from calibtune.features import candidate_layers, extract_features
from calibtune.forward import continuation_logprobs, encode_continuations
from calibtune.models import choose_dtype, load_model, model_fingerprint

ARCHS = ["llama", "gemma", "mistral", "qwen"]


@pytest.mark.parametrize("arch", ARCHS)
def test_load_by_path(tiny_models, arch):
    lm = load_model(str(tiny_models[arch]), dtype="float32")
    assert lm.num_layers == 2
    assert lm.dtype == torch.float32
    assert not lm.model.training
    assert lm.tokenizer.pad_token_id is not None
    # no hub kernels: on CUDA, training mode would fetch them from the hub (offline: an error)
    assert not lm.model.use_kernels and lm.model.kernels_mode is None
    lm.model.train()
    assert lm.model.kernels_mode is None
    lm.model.eval()


# RMSNorms per tiny model: two per layer and the final one; Gemma 3 adds a query and a key norm
# per layer and norms after attention and after the MLP.
NORMS = {"llama": 5, "mistral": 5, "qwen": 5, "gemma": 13}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_rms_norms_give_transformers_values_and_gradients_bit_for_bit(tiny_models, arch, dtype):
    from transformers import AutoModelForCausalLM

    from calibtune.models import fuse_rms_norms

    lm = load_model(str(tiny_models[arch]), dtype=dtype)
    plain = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=lm.dtype, use_kernels=False).to(lm.device)
    torch.manual_seed(1)  # norms' weights away from their initial ones, so that they take part
    for module in plain.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.weight.data.normal_(0.0, 0.5)
    lm.model.load_state_dict(plain.state_dict())
    assert sum("forward" in vars(m) for m in lm.model.modules()) == NORMS[arch]
    assert sum("forward" in vars(m) for m in plain.modules()) == 0
    ids = torch.randint(3, plain.config.vocab_size, (3, 17), device=lm.device)
    logits = []
    for model in (lm.model, plain):
        model.requires_grad_(True)
        model.zero_grad()
        out = model(ids).logits
        out.float().square().mean().backward()
        logits.append(out)
    assert torch.equal(logits[0], logits[1])
    grads = dict(plain.named_parameters())
    for name, param in lm.model.named_parameters():
        assert torch.equal(param.grad, grads[name].grad), name
    assert fuse_rms_norms(plain) == NORMS[arch]


def test_auto_dtype_is_bf16_exactly_where_the_hardware_runs_it_fast(monkeypatch):
    from pathlib import Path

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    fast = bool(flags & {"amx_bf16", "amx_tile", "avx512_bf16"})  # read from the CPU, not from torch
    assert choose_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if fast else torch.float32)
    for supported, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert choose_dtype("auto", torch.device("cuda")) == expected
    assert choose_dtype("bf16") == torch.bfloat16 and choose_dtype("float32") == torch.float32
    with pytest.raises(CalibtuneError, match="unknown dtype 'int3'"):
        choose_dtype("int3")


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(CalibtuneError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibtuneError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_unknown_hub_name_lists_bundled(monkeypatch):
    import huggingface_hub

    # huggingface_hub reads HF_HUB_OFFLINE at import; without it this would wait on the network
    monkeypatch.setitem(huggingface_hub.is_offline_mode.__globals__, "HF_HUB_OFFLINE", True)
    with pytest.raises(CalibtuneError) as err:
        load_model("no-such-org/no-such-model-xyz")
    assert "smollm2-135m" in str(err.value) and "gemma3-270m" in str(err.value)


def test_fingerprint_changes_with_files(tiny_models, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny_models["llama"], copy)
    before = model_fingerprint(str(copy))
    assert before == model_fingerprint(str(tiny_models["llama"]))  # a copy: the same weights, the same print
    (copy / "extra.txt").write_text("x")
    assert model_fingerprint(str(copy)) != before
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight, same size
    weights.write_bytes(bytes(data))
    changed = model_fingerprint(str(copy))
    assert changed != before and model_fingerprint(str(copy)) == changed
    assert model_fingerprint("smollm2-135m") == f"bundled:{BUNDLED['smollm2-135m'].sha256}"


def _hand_logprob(lm, context: str, continuation: str) -> float:
    """Sum of log p(continuation token | prefix) from one full forward pass over every position."""
    ctx = lm.tokenizer(context)["input_ids"]
    tgt = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + tgt], device=lm.device)
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(ids).logits.float()[0], dim=-1)
    return sum(float(logp[len(ctx) + i - 1, t]) for i, t in enumerate(tgt))


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_cloze_matches_hand_computation_and_batching(tiny_models, arch):
    lm = load_model(str(tiny_models[arch]), dtype="float32")
    contexts = ["Question: What is the capital of France?\nAnswer:"] * 3 + ["Question: Which planet?\nAnswer:"]
    conts = [" Paris", " the lazy dog", " Jupiter", " sunlight water"]
    seqs = encode_continuations(lm.tokenizer, contexts, conts)
    sums, counts = continuation_logprobs(lm, seqs, token_budget=64)
    sums1, _ = continuation_logprobs(lm, seqs, token_budget=1)
    for i, (c, t) in enumerate(zip(contexts, conts)):
        assert sums[i] == pytest.approx(_hand_logprob(lm, c, t), abs=1e-4)
        assert counts[i] == len(lm.tokenizer(t, add_special_tokens=False)["input_ids"])
    np.testing.assert_allclose(sums, sums1, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_features_are_the_hidden_states_of_prompt_and_answer(tiny_models, arch):
    lm = load_model(str(tiny_models[arch]), dtype="float32")
    prompts = ["Question: Which planet?\nAnswer:", "Question: What is the capital of France?\nAnswer:"]
    answers = [" Jupiter", " Paris"]
    feats = extract_features(lm, prompts, answers, layers=[1, 2], token_budget=64)
    assert feats.shape == (2, 2, 32)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        ids = lm.tokenizer(prompt)["input_ids"] + lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            states = lm.model(torch.tensor([ids], device=lm.device), output_hidden_states=True).hidden_states
        np.testing.assert_allclose(feats[i, 0], states[1][0, -1].cpu().numpy(), atol=1e-4)
        np.testing.assert_allclose(feats[i, 1], states[2][0, -1].cpu().numpy(), atol=1e-4)
        mean = extract_features(lm, [prompt], [answer], layers=[2], token="mean")
        np.testing.assert_allclose(mean[0, 0], states[2][0].mean(0).cpu().numpy(), atol=1e-4)


def test_candidate_layers():
    assert candidate_layers(30) == [8, 15, 22, 30]
    assert candidate_layers(18) == [4, 9, 14, 18]
    assert candidate_layers(2) == [1, 2]
    assert candidate_layers(30, [5, 3, 5]) == [3, 5]
    with pytest.raises(ValueError, match="out of range"):
        candidate_layers(2, [3])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_options_score_and_read_as_each_option_alone(tiny_models, arch, attention):
    """A question read as one packed row (prompt, then every option under a branch mask) gives every option the
    log-probability and the hidden states of that option read alone after the prompt, under either attention
    (eager attention adds the mask to the scores, so a mask of booleans would be read as 0 and 1)."""
    from calibtune.forward import Tree, tree_pass

    lm = load_model(str(tiny_models[arch]), dtype="float32")
    lm.model.set_attn_implementation(attention)
    contexts = ["Question: What is the capital of France?\nAnswer:", "Question: Which planet?\nAnswer:",
                "Question: " + "the lazy dog " * 4 + "?\nAnswer:"]
    options = [[" Paris", " the lazy dog", " Jupiter water"], [" fox", " Jupiter"], [" quick", " brown fox", " a"]]
    trees = [Tree(tuple(lm.tokenizer(c)["input_ids"]),
                  tuple(tuple(lm.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in opts))
             for c, opts in zip(contexts, options)]
    for budget in (32, 4096):  # one question per pass, or all of them in one padded batch
        out = tree_pass(lm, trees, layers=[1, 2], token_budget=budget)
        for tree, c, opts, got, feats in zip(trees, contexts, options, out.logprobs, out.features):
            np.testing.assert_allclose(got, [_hand_logprob(lm, c, o) for o in opts], atol=1e-4)
            for k, branch in enumerate(tree.branches):
                with torch.no_grad():
                    ids = torch.tensor([tree.context + branch], device=lm.device)
                    states = lm.model(ids, output_hidden_states=True).hidden_states
                np.testing.assert_allclose(feats[k, 0], states[1][0, -1].cpu().numpy(), atol=1e-4)
                np.testing.assert_allclose(feats[k, 1], states[2][0, -1].cpu().numpy(), atol=1e-4)


def test_contexts_longer_than_the_sliding_window_fall_back(tiny_models):
    from calibtune.forward import Tree, tree_pass

    lm = load_model(str(tiny_models["gemma"]), dtype="float32")
    long_context = "Question: " + "the quick brown fox jumps over the lazy dog " * 8 + "?\nAnswer:"
    ctx_ids = lm.tokenizer([long_context, "Question: Which planet?\nAnswer:"])["input_ids"]
    assert len(ctx_ids[0]) > lm.model.config.sliding_window
    opt_ids = [tuple(o) for o in lm.tokenizer([" Paris", " dog"], add_special_tokens=False)["input_ids"]]
    out = tree_pass(lm, [Tree(tuple(c), tuple(opt_ids)) for c in ctx_ids])
    np.testing.assert_allclose(out.logprobs[0], [_hand_logprob(lm, long_context, o) for o in (" Paris", " dog")],
                               atol=1e-4)


def test_each_process_of_a_launch_takes_the_gpu_of_its_local_rank(monkeypatch):
    from calibtune.models import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert choose_device("auto") == torch.device("cuda", 3)
    monkeypatch.delenv("LOCAL_RANK")
    assert choose_device("auto") == torch.device("cuda", 0)
    assert choose_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_head_scratch_gives_the_log_softmax_and_is_reused_across_calls(tiny_models, monkeypatch, dtype):
    """token_logprobs over several chunks of rows, with one scratch kept across calls of different sizes, gives
    log softmax(head(h))[target] of every row (soft-capped as Gemma does), and writes into the same buffers."""
    import calibtune.forward as forward

    lm = load_model(str(tiny_models["gemma"]), dtype=dtype)
    monkeypatch.setattr(lm.model.config, "final_logit_softcapping", 5.0)
    monkeypatch.setattr(forward, "HEAD_CHUNK", 3)
    head = lm.model.get_output_embeddings()
    scratch = forward.HeadScratch()
    generator = torch.Generator().manual_seed(0)
    pointers = set()
    for rows in (7, 3, 5):
        hidden = torch.randn(rows, head.weight.shape[1], generator=generator).to(head.weight.dtype)
        targets = torch.randint(0, head.weight.shape[0], (rows,), generator=generator)
        with torch.no_grad():
            logits = head(hidden).float()
            expected = torch.log_softmax(torch.tanh(logits / 5.0) * 5.0, dim=-1)[torch.arange(rows), targets]
            got = forward.token_logprobs(lm.model, hidden, targets, scratch)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        pointers.add(tuple(buf.data_ptr() for buf in scratch._buffers.values()))
    assert len(pointers) == 1 and len(next(iter(pointers))) == 2
