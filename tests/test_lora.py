"""LoRA + Prompt, LoRA with a head, the zero-shot query and temperature scaling, on tiny models."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.spatial.distance import jensenshannon
from scipy.special import expit, softmax
from scipy.stats import entropy
from sklearn.metrics import log_loss, roc_auc_score

from calibtune.calibration import TemperatureScaler
from calibtune.errors import CalibtuneError
from calibtune.estimator_settings import LoraHeadConfig, LoraPromptConfig
from calibtune.estimators.adapters import attach_lora
from calibtune.estimators.divergence import divergence
from calibtune.estimators.lora_head import LoraHeadEstimator
from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries, query_p_correct
from calibtune.estimators.query import option_token_ids
from calibtune.forward import encode_texts, lm_head_logits, pad_ids
from calibtune.models import load_model
from calibtune.prompts import DEFAULT_QUERY
from toy import crash_after_checkpoints, separable_toy

ARCHS = ["llama", "gemma", "mistral", "qwen"]


@pytest.mark.parametrize("arch", ARCHS)
def test_query_option_tokens_per_tokenizer_family(tiny_models, arch):
    lm = load_model(str(tiny_models[arch]), dtype="float32")
    no, yes = option_token_ids(lm.tokenizer, DEFAULT_QUERY, (" no", " yes"))
    assert lm.tokenizer.decode([no]).strip() == "no"
    assert lm.tokenizer.decode([yes]).strip() == "yes"
    # the token really is the one that follows the prompt when the whole text is tokenized
    full = lm.tokenizer(DEFAULT_QUERY + " yes", add_special_tokens=False)["input_ids"]
    assert yes in full[-2:]
    with pytest.raises(CalibtuneError, match="same token"):
        option_token_ids(lm.tokenizer, DEFAULT_QUERY, (" yes", " yes"))


def test_divergence_is_zero_with_fresh_adapters_and_positive_after_a_step(tiny_models):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, _ = separable_toy(4)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    peft_model = attach_lora(lm, LoraPromptConfig(), seed=0)
    ids = torch.tensor([seqs[0].ids], device=lm.device)

    def both():
        adapted = lm_head_logits(lm.model, lm.model.get_decoder()(input_ids=ids).last_hidden_state[0])
        with torch.no_grad(), peft_model.disable_adapter():
            base = lm_head_logits(lm.model, lm.model.get_decoder()(input_ids=ids).last_hidden_state[0])
        return adapted, base

    adapted, base = both()
    for kind in ("js", "forward_kl", "reverse_kl"):
        assert float(divergence(adapted, base, kind).detach()) == pytest.approx(0.0, abs=1e-6)
    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    adapted.sum().backward()
    opt.step()
    adapted, base = both()
    for kind in ("js", "forward_kl", "reverse_kl"):
        assert float(divergence(adapted, base, kind).detach()) > 1e-6
    peft_model.unload()


def test_divergences_match_scipy():
    rng = np.random.default_rng(1)
    adapted, base = rng.normal(size=(5, 11)) * 3, rng.normal(size=(5, 11)) * 3
    q, p = softmax(adapted, axis=1), softmax(base, axis=1)
    expected = {
        "js": np.mean(jensenshannon(p, q, axis=1) ** 2),  # scipy gives the square root of the divergence
        "forward_kl": np.mean(entropy(p, q, axis=1)),  # KL(base || adapted)
        "reverse_kl": np.mean(entropy(q, p, axis=1)),  # KL(adapted || base)
    }
    for kind, value in expected.items():
        got = float(divergence(torch.tensor(adapted), torch.tensor(base), kind))
        assert got == pytest.approx(value, rel=1e-5), kind
    with pytest.raises(CalibtuneError, match="unknown divergence"):
        divergence(torch.tensor(adapted), torch.tensor(base), "hellinger")


def test_lora_prompt_learns_a_separable_toy_set_and_round_trips(tiny_models, tmp_path):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(80)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    before = query_p_correct(lm, seqs, option_token_ids(lm.tokenizer, DEFAULT_QUERY, (" no", " yes")))
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=8, epochs=4, eval_every=5, patience=20)
    est = LoraPromptEstimator(lm, cfg, meta={"estimator_model": lm.name}).fit(seqs, labels)
    assert est.log.train_loss[-1] < est.log.train_loss[0]
    # the kept adapters are those of the best validation (an improvement counts when it exceeds 1e-4): the
    # best step replayed from the curve is the recorded one, and the fitted estimator's validation loss is its
    best_step, best = 0, float("inf")
    for step, loss in est.log.val_loss:
        if loss < best - 1e-4:
            best_step, best = step, loss
    assert (est.log.best_step, est.log.best_val_loss) == (best_step, best)
    assert best < est.log.val_loss[0][1] - 0.1  # it learnt
    val = est.val_indices
    p_val = np.clip(est.predict_proba([seqs[i] for i in val]), 1e-12, 1)
    assert log_loss(labels[val], p_val, labels=[0, 1]) == pytest.approx(est.log.best_val_loss, rel=1e-4)
    p = est.predict_proba(seqs)
    assert log_loss(labels, np.clip(p, 1e-6, 1 - 1e-6)) < log_loss(labels, np.clip(before, 1e-6, 1 - 1e-6))
    assert roc_auc_score(labels, p) > 0.9
    est.save(tmp_path / "lp")
    assert (tmp_path / "lp" / "adapter" / "adapter_model.safetensors").is_file()
    est.release()
    np.testing.assert_allclose(query_p_correct(lm, seqs, est.token_ids), before, atol=1e-6)  # base model restored
    loaded = LoraPromptEstimator.load(tmp_path / "lp", lm)
    np.testing.assert_allclose(loaded.predict_proba(seqs), p, atol=1e-6)
    loaded.release()


def test_training_is_deterministic(tiny_models):
    lm = load_model(str(tiny_models["gemma"]), dtype="float32")
    prompts, answers, labels = separable_toy(32)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=8, max_steps=6, eval_every=3)
    runs = []
    for _ in range(2):
        est = LoraPromptEstimator(lm, cfg).fit(seqs, labels)
        runs.append(est.predict_proba(seqs))
        est.release()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_precomputed_base_logits_give_the_same_training_as_recomputing_them(tiny_models, monkeypatch):
    from calibtune.estimators import lora_prompt

    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(32)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(kl_weight=1.0, learning_rate=1e-2, batch_size=8, max_steps=6, eval_every=3)
    runs = []
    for budget in (lora_prompt.BASE_LOGITS_BUDGET, 0):
        monkeypatch.setattr(lora_prompt, "BASE_LOGITS_BUDGET", budget)
        est = LoraPromptEstimator(lm, cfg).fit(seqs, labels)
        runs.append((est.log.train_loss, est.predict_proba(seqs)))
        est.release()
    assert len(runs[0][0]) >= 3
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-4)
    np.testing.assert_allclose(runs[0][1], runs[1][1], atol=1e-5)
    readings = lora_prompt.BaseReadings()
    tokens = option_token_ids(lm.tokenizer, DEFAULT_QUERY, (" no", " yes"))
    _, seq_logits = readings.read(lm, seqs[:2], tokens, answers=True, batch_size=2)
    assert [t.shape[0] for t in seq_logits] == [s.answer[1] - s.answer[0] for s in seqs[:2]]
    # one read's outputs are views of one block (one allocation, freed whole), not a copy per sequence
    assert len({t.untyped_storage().data_ptr() for t in seq_logits}) == 1
    assert seq_logits[0].untyped_storage().nbytes() == sum(t.nbytes for t in seq_logits)
    assert readings.fits(lm, seqs[:2], budget=2**30) and not readings.fits(lm, seqs[:2], budget=10)


def test_the_base_readings_give_the_zero_shot_query_and_the_divergence_target_of_separate_passes(tiny_models):
    from calibtune.estimators import lora_prompt
    from calibtune.estimators.query import p_yes

    lm = load_model(str(tiny_models["gemma"]), dtype="float32")
    prompts, answers, _ = separable_toy(12)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    tokens = option_token_ids(lm.tokenizer, DEFAULT_QUERY, (" no", " yes"))
    readings = lora_prompt.BaseReadings()
    two_way, outputs = readings.read(lm, seqs, tokens, answers=True, batch_size=5)
    # the zero-shot query read on its own, one sequence at a time
    alone = np.concatenate([query_p_correct(lm, [s], tokens, 1) for s in seqs])
    np.testing.assert_allclose(p_yes(two_way), alone, atol=1e-6)
    # the answer tokens' logits of the base model cut at the end of the answer, as the divergence needs them
    head = lm.model.get_output_embeddings()
    for seq, got in zip(seqs, outputs):
        start, end = seq.answer
        with torch.no_grad():
            ids = torch.tensor([seq.ids[:end]], device=lm.device)
            hidden = lm.model.get_decoder()(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(got, head(hidden[start - 1:end - 1]), atol=1e-5, rtol=1e-5)
    again, _ = readings.read(lm, seqs[:3], tokens, answers=False)  # read before: no pass
    torch.testing.assert_close(again, two_way[:3], atol=0, rtol=0)


def test_loaded_for_another_model_is_refused(tiny_models, tmp_path):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(16)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(kl_weight=0.0, max_steps=2, eval_every=1)
    est = LoraPromptEstimator(lm, cfg, meta={"estimator_model": lm.name}).fit(seqs, labels)
    est.save(tmp_path / "lp")
    est.release()
    other = load_model(str(tiny_models["qwen"]), dtype="float32")
    with pytest.raises(CalibtuneError, match="trained on estimator model"):
        LoraPromptEstimator.load(tmp_path / "lp", other)


def test_lora_head_learns_and_round_trips(tiny_models, tmp_path):
    lm = load_model(str(tiny_models["qwen"]), dtype="float32")
    prompts, answers, labels = separable_toy(80)
    seqs = encode_texts(lm.tokenizer, [p + a for p, a in zip(prompts, answers)])
    cfg = LoraHeadConfig(learning_rate=1e-2, batch_size=8, epochs=4, eval_every=5, patience=20)
    est = LoraHeadEstimator(lm, cfg, meta={"estimator_model": lm.name}).fit(seqs, labels)
    assert est.layer == 1
    p = est.predict_proba(seqs)
    assert roc_auc_score(labels, p) > 0.9
    est.save(tmp_path / "lh")
    est.release()
    loaded = LoraHeadEstimator.load(tmp_path / "lh", lm)
    np.testing.assert_allclose(loaded.predict_proba(seqs), p, atol=1e-6)
    loaded.release()


def test_one_class_labels_are_refused(tiny_models):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, _ = separable_toy(10)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    with pytest.raises(CalibtuneError, match="one class"):
        LoraPromptEstimator(lm).fit(seqs, np.ones(10))


def test_temperature_scaling_finds_the_nll_minimum_and_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    n = 40_000
    true_p = rng.uniform(0.2, 0.8, n)
    y = (rng.uniform(size=n) < true_p).astype(int)
    logit = np.log(true_p / (1 - true_p))
    overconfident = 1 / (1 + np.exp(-4 * logit))  # calibrated after dividing the logit by exactly 4
    half = n // 2
    scaler = TemperatureScaler.fit(overconfident[:half], y[:half])
    # the same objective minimised independently (scipy's Brent on the temperature itself)
    z = 4 * logit[:half]

    def nll(t: float) -> float:
        return float(np.mean(np.logaddexp(0.0, z / t) - y[:half] * z / t))

    reference = minimize_scalar(nll, bracket=(1.0, 8.0), tol=1e-10).x
    assert scaler.temperature == pytest.approx(reference, rel=1e-3)
    assert scaler.temperature == pytest.approx(4.0, rel=0.05)  # 20,000 labels pin it down to a few percent
    after = scaler.transform(overconfident[half:])
    assert log_loss(y[half:], after) < log_loss(y[half:], overconfident[half:])
    assert roc_auc_score(y[half:], after) == roc_auc_score(y[half:], overconfident[half:])  # monotone: same ranks
    assert TemperatureScaler.fit(np.array([0.3, 0.6]), np.array([1, 1])).temperature == 1.0


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_training_resumes_from_a_checkpoint_to_the_same_result(tiny_models, tmp_path, ema_decay):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(48)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=4, max_steps=8, eval_every=2, patience=10,
                           ema_decay=ema_decay)
    est = LoraPromptEstimator(lm, cfg).fit(seqs, labels)
    expected, expected_log = est.predict_proba(seqs), est.log
    est.release()

    checkpoint = tmp_path / "ckpt"
    crashed = LoraPromptEstimator(lm, cfg)
    with pytest.raises(KeyboardInterrupt), crash_after_checkpoints(2):  # dies after the checkpoint at step 4
        crashed.fit(seqs, labels, checkpoint)
    crashed.release()
    assert (checkpoint / "state.safetensors").is_file()
    resumed = LoraPromptEstimator(lm, cfg).fit(seqs, labels, checkpoint)
    np.testing.assert_array_equal(resumed.predict_proba(seqs), expected)
    assert resumed.log.train_loss == expected_log.train_loss
    assert resumed.log.val_loss == expected_log.val_loss
    resumed.release()


def test_the_weight_average_is_what_training_validates_and_keeps():
    """With ema_decay, the weights kept are the moving average of the optimizer's trajectory, computed here
    independently from that trajectory; the optimizer's steps themselves are unchanged by it."""
    from calibtune.estimator_settings import AdapterConfig
    from calibtune.estimators.adapters import train_loop

    data = torch.from_numpy(np.random.default_rng(0).normal(size=(32, 3))).float()

    def run(ema_decay):
        w = torch.nn.Parameter(torch.zeros(3))
        seen, validated = [], []

        def step_loss(batch):
            seen.append(w.detach().clone())
            return ((w - data[batch].mean(0)) ** 2).sum()

        def val_loss():
            validated.append(w.detach().clone())
            return -float(len(validated))  # always better: the last validation is kept

        settings = AdapterConfig(learning_rate=0.1, batch_size=4, epochs=2, max_steps=12, eval_every=5, patience=10,
                                 warmup_fraction=0.0, ema_decay=ema_decay)
        train_loop([w], 32, step_loss, val_loss, lambda: {"w": w.detach().clone()},
                   lambda s: w.data.copy_(s["w"]), settings, seed=0, description="toy")
        return w.detach().clone(), seen, validated

    plain, trajectory, _ = run(None)
    averaged, trajectory_again, validated = run(0.9)
    for a, b in zip(trajectory, trajectory_again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    weights = trajectory[1:] + [plain]  # after steps 1..12
    ema, expected = trajectory[0].clone(), {}
    for step, value in enumerate(weights, start=1):
        decay = min(0.9, (1 + step) / (10 + step))
        ema = decay * ema + (1 - decay) * value
        expected[step] = ema.clone()
    for got, step in zip(validated[1:], (5, 10, 12)):  # step 0 is validated before training (the start)
        torch.testing.assert_close(got, expected[step], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(averaged, expected[12], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(averaged, plain, atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_a_decoder_cut_at_a_layer_gives_that_layers_hidden_states(tiny_models, arch):
    from calibtune.forward import decoder_up_to

    lm = load_model(str(tiny_models[arch]), dtype="float32")
    ids = torch.tensor([lm.tokenizer("Question: Which planet?\nAnswer: Jupiter")["input_ids"]], device=lm.device)
    with torch.no_grad():
        full = lm.model(ids, output_hidden_states=True).hidden_states
        with decoder_up_to(lm, 1) as decoder:
            assert len(decoder.layers) == 1
            cut = decoder(input_ids=ids).last_hidden_state
        again = lm.model(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cut, full[1], rtol=0, atol=0)  # the same arithmetic, not just close
    assert len(lm.model.get_decoder().layers) == 2
    torch.testing.assert_close(again[2], full[2], rtol=0, atol=0)  # the whole model is back


@pytest.mark.parametrize("arch", [*ARCHS, "gemma-mixed"])
def test_a_decoder_started_at_a_layer_from_its_entering_states_gives_the_whole_models_output(tiny_models, arch,
                                                                                            tmp_path):
    from calibtune.forward import decoder_up_to
    from conftest import build_model

    folder = tiny_models[arch.split("-")[0]]
    if arch == "gemma-mixed":  # a full-attention layer under a sliding one: each keeps its own type and rotary
        model = build_model("gemma", load_model(str(folder)).tokenizer.vocab_size + 8)
        model.config.layer_types = ["full_attention", "sliding_attention"]
        model.save_pretrained(tmp_path)
        load_model(str(folder)).tokenizer.save_pretrained(tmp_path)
        folder = tmp_path
    lm = load_model(str(folder), dtype="float32")
    types = list(getattr(lm.model.config, "layer_types", None) or [])
    ids, mask = pad_ids([lm.tokenizer("Question: Which planet?\nAnswer: Jupiter")["input_ids"],
                         lm.tokenizer("Answer: no")["input_ids"]], lm.tokenizer.pad_token_id, lm.device)
    with torch.no_grad():
        whole = lm.model(ids, attention_mask=mask, output_hidden_states=True)
        with decoder_up_to(lm, None, final_norm=True, start=1) as decoder:
            assert len(decoder.layers) == 1
            top = decoder(inputs_embeds=whole.hidden_states[1], attention_mask=mask, use_cache=False).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(top[real], whole.hidden_states[2][real], rtol=1e-5, atol=1e-5)
    assert len(lm.model.get_decoder().layers) == 2
    assert list(getattr(lm.model.config, "layer_types", None) or []) == types
    if arch == "gemma-mixed":  # what a decoder that took the first layer's type would give differs
        lm.model.config.layer_types = ["full_attention", "full_attention"]
        with torch.no_grad(), decoder_up_to(lm, None, final_norm=True, start=1) as decoder:
            wrong = decoder(inputs_embeds=whole.hidden_states[1], attention_mask=mask,
                            use_cache=False).last_hidden_state
        assert not torch.allclose(wrong[real], whole.hidden_states[2][real], atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_top_half_adapters_train_from_the_kept_lower_states_as_from_whole_passes(tiny_models, monkeypatch, arch):
    """Training, validation and scoring start from the states the base pass kept, as the study runs them: the
    answers to be scored afterwards (the zero-shot query's) are read by the base model before training."""
    from calibtune.estimators import lora_prompt

    lm = load_model(str(tiny_models[arch]), dtype="float32")
    prompts, answers, labels = separable_toy(40)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    train, scored = seqs[:32], seqs[32:]
    cfg = LoraPromptConfig(layers="top_half", kl_weight=1.0, learning_rate=1e-2, batch_size=8, max_steps=6,
                           eval_every=3)
    first_layer = lm.model.get_decoder().layers[0]
    runs = []
    for budget in (lora_prompt.LOWER_STATES_BUDGET, 0):
        monkeypatch.setattr(lora_prompt, "LOWER_STATES_BUDGET", budget)
        calls = []
        hook = first_layer.register_forward_hook(lambda module, args, out, calls=calls: calls.append(1))
        base, est = lora_prompt.BaseReadings(), LoraPromptEstimator(lm, cfg)
        start = est.kept_states_start(base, train + scored)
        base.read(lm, scored, est.token_ids, answers=False, start=start)
        est.fit(train, labels[:32], base=base)
        p_scored = est.predict_proba(scored)
        hook.remove()
        runs.append((est.log.train_loss, [v for _, v in est.log.val_loss], est.val_logits, len(calls), p_scored,
                     start))
        passes = est.log.steps + len(est.log.val_loss) - 1  # each step, each validation after step 0 (one batch)
        est.release()
        # the states stay with the readings for the next cell on this model (within the budget)
        assert set(base.lower) == {(start, s.ids) for s in seqs} if start else not base.lower
    kept, whole = runs
    assert kept[5] == 1 and whole[5] == 0  # the first of the two layers carries no adapters
    np.testing.assert_allclose(kept[0], whole[0], rtol=1e-5)  # every step's loss
    np.testing.assert_allclose(kept[1], whole[1], rtol=1e-5)  # every validation
    np.testing.assert_allclose(kept[2], whole[2], atol=1e-5)
    np.testing.assert_allclose(kept[4], whole[4], atol=1e-6)  # the answers scored after training
    # the frozen first layer ran in the base passes only (8 answers to score: one batch of up to 16; then 7 held-out
    # and 25 training answers: 3 batches), not again in every step, validation and scoring
    assert kept[3] == 4 and whole[3] == 4 + passes + 1 and passes >= 5


def test_base_readings_run_only_the_layers_below_for_answers_that_lack_only_their_states(tiny_models, monkeypatch):
    from calibtune.estimators import lora_prompt

    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, _ = separable_toy(8)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    tokens = option_token_ids(lm.tokenizer, DEFAULT_QUERY, (" no", " yes"))
    base = lora_prompt.BaseReadings()
    before, _ = base.read(lm, seqs, tokens, answers=False)  # the zero-shot query's read: no states
    layers = lm.model.get_decoder().layers
    calls = {0: [], 1: []}
    hooks = [layers[k].register_forward_hook(lambda m, a, o, k=k: calls[k].append(1)) for k in (0, 1)]
    after, _ = base.read(lm, seqs, tokens, answers=False, start=1)
    for hook in hooks:
        hook.remove()
    assert (len(calls[0]), len(calls[1])) == (1, 0)  # one batch through the first layer only
    assert torch.equal(after, before)
    fresh = lora_prompt.BaseReadings()
    fresh.read(lm, seqs, tokens, answers=False, start=1)
    for kept, whole in zip(base.states(seqs, 1), fresh.states(seqs, 1)):
        torch.testing.assert_close(kept, whole, atol=1e-6, rtol=1e-6)
    # room for more states: beside the kept ones while they fit, else in place of them
    per_token = lm.model.get_input_embeddings().weight.shape[1] * 4
    held, half = sum(len(s.ids) for s in seqs) * per_token, sum(len(s.ids) for s in seqs[:4]) * per_token
    others = encode_queries(lm.tokenizer, [p + " again" for p in prompts[:4]], answers[:4], DEFAULT_QUERY)
    extra = sum(len(s.ids) for s in others) * per_token
    assert base.make_room(lm, seqs[:4] + others, 1, budget=held + extra) and len(base.lower) == 8
    assert base.make_room(lm, seqs[:4] + others, 1, budget=half + extra) and not base.lower  # forgotten: now fit
    fresh.read(lm, seqs, tokens, answers=False, start=1)
    assert not fresh.make_room(lm, seqs, 1, budget=held - 1) and not fresh.lower


def test_lora_head_starts_from_a_fitted_probe(tiny_models):
    """Before any update LoRA with a head is the Probe it starts from: the same standardisation and weights."""
    from calibtune.estimator_settings import ProbeConfig
    from calibtune.estimators.probe import ProbeEstimator
    from calibtune.features import answer_sequences, extract_features

    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(40)
    x = extract_features(lm, prompts, answers, [1])
    probe = ProbeEstimator(ProbeConfig(layer=1, max_epochs=20, folds=1), layers=(1,)).fit(x, labels)
    cfg = LoraHeadConfig(layer=1, learning_rate=1e-12, max_steps=1, eval_every=1)
    est = LoraHeadEstimator(lm, cfg).fit(answer_sequences(lm, prompts, answers), labels, probe=probe)
    np.testing.assert_allclose(est.predict_proba(answer_sequences(lm, prompts, answers)), probe.p_correct(x),
                               atol=1e-5)
    est.release()


def test_balanced_weights_make_every_dataset_half_right():
    from calibtune.estimators.splits import balanced_weights

    labels = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 1])
    groups = ["a", "a", "a", "a", "b", "b", "b", "b", "c", "c"]  # a: 3/4 right, b: 1/4 right, c: all right
    w = balanced_weights(labels, groups)
    raw = np.array([0.5 / 0.75] * 3 + [0.5 / 0.25] + [0.5 / 0.25] + [0.5 / 0.75] * 3 + [1.0, 1.0])
    np.testing.assert_allclose(w, raw / raw.mean())
    for g in ("a", "b"):
        members = np.array(groups) == g
        assert w[members & (labels == 1)].sum() == pytest.approx(w[members & (labels == 0)].sum())
    assert w.mean() == pytest.approx(1.0)


def test_lora_prompt_trains_with_dataset_balance(tiny_models):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(32)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    groups = ["a" if i < 20 else "b" for i in range(32)]
    cfg = LoraPromptConfig(balance="dataset", max_steps=2, eval_every=1, batch_size=4)
    est = LoraPromptEstimator(lm, cfg).fit(seqs, labels, groups=groups)
    assert est.log.steps == 2 and np.isfinite(est.log.val_loss).all()
    est.release()
    with pytest.raises(CalibtuneError, match="needs each training answer's dataset"):
        LoraPromptEstimator(lm, cfg).fit(seqs, labels)


def test_an_epoch_is_a_permutation_grouped_by_length():
    from calibtune.estimators.adapters import epoch_order

    lengths = list(np.random.default_rng(0).integers(5, 80, 300))
    order = epoch_order(np.random.default_rng(1), 300, 4, lengths)
    assert sorted(order.tolist()) == list(range(300))  # every example once
    spread = np.mean([np.ptp([lengths[i] for i in order[k:k + 4]]) for k in range(0, 300, 4)])
    plain = np.random.default_rng(1).permutation(300)
    random_spread = np.mean([np.ptp([lengths[i] for i in plain[k:k + 4]]) for k in range(0, 300, 4)])
    assert spread < random_spread / 4  # batches of like lengths: little padding
    assert np.array_equal(epoch_order(np.random.default_rng(1), 300, 4, None), plain)


@pytest.mark.parametrize("arch", ["llama", "gemma"])
def test_a_differentiated_pass_runs_eager_attention_on_the_cpu_with_sdpas_numbers(tiny_models, arch):
    """Training steps swap the CPU's slow flash-attention backward for eager attention: the loss and the
    adapters' gradients agree with SDPA's to 1e-5 (fp32, padded batch), and SDPA is back afterwards."""
    from calibtune.forward import differentiable_attention

    lm = load_model(str(tiny_models[arch]), dtype="float32", device="cpu")
    prompts, answers, _ = separable_toy(6)
    seqs = encode_queries(lm.tokenizer, prompts, [a * (i + 1) for i, a in enumerate(answers)], DEFAULT_QUERY)
    peft_model = attach_lora(lm, LoraPromptConfig(dropout=0.0), seed=0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)  # non-zero adapters, so their A matrices get gradients too
    ids, mask = pad_ids([s.ids for s in seqs], lm.tokenizer.pad_token_id, lm.device)
    assert mask.eq(0).any()  # padding, so the attention mask matters
    params = [p for p in peft_model.parameters() if p.requires_grad]
    direction = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def loss_and_grads(eager: bool):
        peft_model.zero_grad(set_to_none=True)
        assert lm.model.config._attn_implementation == "sdpa"
        with differentiable_attention(lm) if eager else contextlib.nullcontext():
            if eager:
                assert lm.model.config._attn_implementation == "eager"
            hidden = lm.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        loss = (hidden.float() * mask[..., None] * direction).sum(-1).pow(2).mean()  # not normalised away
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in params]

    (sdpa_loss, sdpa_grads), (eager_loss, eager_grads) = loss_and_grads(False), loss_and_grads(True)
    assert lm.model.config._attn_implementation == "sdpa"
    assert eager_loss == pytest.approx(sdpa_loss, rel=1e-5)
    for a, b in zip(sdpa_grads, eager_grads):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    assert max(float(g.abs().max()) for g in sdpa_grads) > 1e-4
    peft_model.unload()


def test_bit_dropout_drops_at_the_rate_scales_to_keep_the_mean_and_replays_with_the_seed():
    from calibtune.estimators.adapters import BitDropout

    drop = BitDropout(0.1)
    x = torch.rand(1001, 999) + 0.5  # no zeros of its own; a size not a multiple of 4
    torch.manual_seed(3)
    y = drop(x)
    dropped = float((y == 0).float().mean())
    n = x.numel()
    assert abs(dropped - 6554 / 65536) < 4 * (0.1 * 0.9 / n) ** 0.5  # rate 6554/65536 within 4 sigma
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] * 65536 / (65536 - 6554))  # the exact inverse of the kept share
    assert float((y / x).mean()) == pytest.approx(1.0, abs=4 * (0.1 / 0.9 / n) ** 0.5)  # unbiased
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)  # torch's generator: a checkpoint's random state replays the masks
    assert not torch.equal(drop(x), y)
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(3)
    drop(xg).sum().backward()
    assert torch.allclose(xg.grad, (y != 0).float() * 65536 / (65536 - 6554))
    drop.eval()
    assert drop(x) is x
    assert BitDropout(0.0)(x) is x


def test_adapters_on_the_cpu_use_bit_dropout_at_the_configured_rate(tiny_models):
    from peft.tuners.lora import LoraLayer

    from calibtune.estimators.adapters import BitDropout

    lm = load_model(str(tiny_models["llama"]), dtype="float32", device="cpu")
    peft_model = attach_lora(lm, LoraPromptConfig(dropout=0.25), seed=0)
    drops = [d for m in peft_model.modules() if isinstance(m, LoraLayer) for d in m.lora_dropout.values()]
    assert drops and all(isinstance(d, BitDropout) and d.threshold == 16384 for d in drops)
    peft_model.unload()


def test_held_out_scores_match_independent_computations():
    """Each ``keep`` criterion against a computation that does not share its code: the loss is sklearn's log loss,
    the calibrated loss is unchanged by a positive affine map of the logits (what Platt scaling undoes) and equals
    the log loss of a logistic regression fitted by scipy, and 1 - AUROC counts weighted concordant pairs."""
    from scipy.optimize import minimize

    from calibtune.estimators.adapters import held_out_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    z = 0.8 * (2 * y - 1) + rng.normal(size=60) + 0.7  # informative, shifted logits
    w = rng.uniform(0.5, 2.0, 60)
    assert held_out_score("loss", z, y, w) == pytest.approx(log_loss(y, expit(z), sample_weight=w), rel=1e-9)
    assert held_out_score("last", z, y) == pytest.approx(log_loss(y, expit(z)), rel=1e-9)

    def fitted_nll(ab):
        return float(np.sum(w * np.logaddexp(0, -(ab[0] * z + ab[1]) * (2 * y - 1))) / w.sum())

    best = minimize(fitted_nll, x0=[1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).fun
    calibrated = held_out_score("calibrated_loss", z, y, w)
    assert calibrated == pytest.approx(best, abs=1e-5)
    assert held_out_score("calibrated_loss", 3.0 * z - 2.0, y, w) == pytest.approx(calibrated, abs=1e-6)
    assert calibrated < held_out_score("loss", z, y, w)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pairs = w[pos][:, None] * w[neg][None, :]
    wins = (z[pos][:, None] > z[neg][None, :]) + 0.5 * (z[pos][:, None] == z[neg][None, :])
    assert held_out_score("auroc", z, y, w) == pytest.approx(1 - (pairs * wins).sum() / pairs.sum(), rel=1e-9)
    with pytest.raises(CalibtuneError, match="unknown keep 'best'"):
        held_out_score("best", z, y)


def _train_on_a_worsening_figure(**settings):
    """``train_loop`` on a toy quadratic (32 examples, batch 4, validated every 2 steps, patience 2) whose
    validation figure only gets worse (0, 1, 2, ...); returns the log and the trained parameter."""
    from calibtune.estimator_settings import AdapterConfig
    from calibtune.estimators.adapters import train_loop

    data = torch.from_numpy(np.random.default_rng(0).normal(size=(32, 3))).float()
    w = torch.nn.Parameter(torch.zeros(3))
    figures = iter(range(100))
    config = AdapterConfig(learning_rate=0.1, batch_size=4, eval_every=2, patience=2, warmup_fraction=0.0,
                           **settings)
    log = train_loop([w], 32, lambda batch: ((w - data[batch].mean(0)) ** 2).sum(), lambda: float(next(figures)),
                     lambda: {"w": w.detach().clone()}, lambda s: w.data.copy_(s["w"]), config, seed=0,
                     description="toy")
    return log, w


@pytest.mark.parametrize("keep", ["loss", "last"])
def test_keep_last_trains_the_whole_schedule_and_keeps_its_end(keep):
    """A validation figure that only gets worse: ``loss`` stops after ``patience`` validations and keeps step 0;
    ``last`` runs every step and keeps the final weights."""
    log, w = _train_on_a_worsening_figure(epochs=2, max_steps=12, keep=keep)
    if keep == "loss":
        assert (log.steps, log.best_step) == (4, 0)
        assert torch.equal(w.detach(), torch.zeros(3))
    else:
        assert (log.steps, log.best_step, log.best_val_loss) == (12, 12, 6.0)
        assert [s for s, _ in log.val_loss] == [0, 2, 4, 6, 8, 10, 12]
        assert not torch.equal(w.detach(), torch.zeros(3))


@pytest.mark.parametrize(("stop_after", "stopped"), [(0.0, 4), (0.5, 12), (0.6, 16), (1.0, 24)])
def test_stop_after_lets_early_stopping_end_training_only_past_that_share_of_the_steps(stop_after, stopped):
    """A figure that only gets worse, 24 steps validated every 2 with patience 2: early stopping ends training at
    the first validation at or past ``stop_after`` of the 24 steps (the fourth step without it); step 0 is kept
    either way."""
    log, w = _train_on_a_worsening_figure(epochs=3, max_steps=24, stop_after=stop_after)
    assert (log.steps, log.best_step) == (stopped, 0)
    assert [s for s, _ in log.val_loss] == list(range(0, stopped + 1, 2))
    assert torch.equal(w.detach(), torch.zeros(3))


@pytest.mark.parametrize("keep", ["auroc", "calibrated_loss"])
def test_lora_prompt_validates_by_the_chosen_criterion(tiny_models, keep):
    """The step-0 figure is the untrained model's held-out answers scored by the criterion (computed here from
    the base model's P(correct)), and the kept adapters' held-out figure is the best one logged."""
    from scipy.special import logit

    from calibtune.estimators.adapters import held_out_score

    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(60)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    before = query_p_correct(lm, seqs, option_token_ids(lm.tokenizer, DEFAULT_QUERY, (" no", " yes")))
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=8, epochs=2, eval_every=3, patience=20, keep=keep)
    est = LoraPromptEstimator(lm, cfg, meta={"estimator_model": lm.name}).fit(seqs, labels)
    val = est.val_indices
    assert est.log.criterion == {"auroc": "1 - AUROC", "calibrated_loss": "calibrated loss"}[keep]
    assert est.log.val_loss[0][1] == pytest.approx(held_out_score(keep, logit(before[val]), labels[val]), abs=1e-5)
    kept = held_out_score(keep, logit(est.predict_proba([seqs[i] for i in val])), labels[val])
    assert kept == pytest.approx(est.log.best_val_loss, abs=1e-5)
    assert est.log.best_val_loss == min(v for _, v in est.log.val_loss)
    if keep == "auroc":
        assert kept == pytest.approx(1 - roc_auc_score(labels[val], est.predict_proba([seqs[i] for i in val])))
    est.release()


def test_kept_held_out_maps_each_validation_to_its_step():
    from calibtune.estimators.adapters import TrainLog, kept_held_out

    z = [np.full(3, float(i)) for i in range(4)]
    log = TrainLog(best_step=4, val_loss=[(0, 1.0), (2, 0.9), (4, 0.8), (6, 0.85)])
    np.testing.assert_array_equal(kept_held_out(log, z), z[2])  # every validation ran here, step 0 among them
    # resumed after step 2: this process ran the validations at steps 4 and 6 only
    np.testing.assert_array_equal(kept_held_out(log, z[:2]), z[0])
    log = TrainLog(best_step=2, val_loss=log.val_loss)
    assert kept_held_out(log, z[:2]) is None  # kept before the resume: not in memory
    log = TrainLog(best_step=0, val_loss=log.val_loss)
    np.testing.assert_array_equal(kept_held_out(log, z[1:], initial=z[0]), z[0])  # step 0 read apart
    assert kept_held_out(log, [], initial=None) is None


@pytest.mark.parametrize("learning_rate", [1e-2, 1e-9])
def test_lora_prompt_keeps_the_kept_steps_held_out_scores_of_a_second_pass(tiny_models, learning_rate):
    """The held-out P(correct) training keeps equals scoring the held-out answers again with the kept adapters
    (fp32, 1e-6), whether training kept a later step or, with nothing learnt, the untrained model (step 0)."""
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(60)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(learning_rate=learning_rate, batch_size=8, epochs=2, eval_every=3, patience=20)
    est = LoraPromptEstimator(lm, cfg).fit(seqs, labels)
    assert (est.log.best_step > 0) == (learning_rate > 1e-6)
    again = est.predict_proba([seqs[i] for i in est.val_indices])
    np.testing.assert_allclose(expit(est.val_logits), again, atol=1e-6)
    est.release()


def test_lora_head_keeps_the_kept_steps_held_out_scores_of_a_second_pass(tiny_models):
    lm = load_model(str(tiny_models["qwen"]), dtype="float32")
    prompts, answers, labels = separable_toy(60)
    seqs = encode_texts(lm.tokenizer, [p + a for p, a in zip(prompts, answers)])
    cfg = LoraHeadConfig(learning_rate=1e-2, batch_size=8, epochs=2, eval_every=3, patience=20)
    est = LoraHeadEstimator(lm, cfg).fit(seqs, labels)
    assert est.log.best_step > 0
    np.testing.assert_allclose(expit(est.val_logits), est.predict_proba([seqs[i] for i in est.val_indices]),
                               atol=1e-6)
    est.release()


def test_a_resumed_lora_prompt_keeps_the_held_out_scores_of_a_step_it_validated_after_resuming(tiny_models, tmp_path):
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(48)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=4, max_steps=8, eval_every=2, patience=10)
    checkpoint = tmp_path / "ckpt"
    crashed = LoraPromptEstimator(lm, cfg)
    with pytest.raises(KeyboardInterrupt), crash_after_checkpoints(2):  # dies after the checkpoint at step 4
        crashed.fit(seqs, labels, checkpoint)
    crashed.release()
    resumed = LoraPromptEstimator(lm, cfg).fit(seqs, labels, checkpoint)
    assert resumed.log.best_step == 8  # validated after the resume (at step 4), so in memory
    np.testing.assert_allclose(expit(resumed.val_logits),
                               resumed.predict_proba([seqs[i] for i in resumed.val_indices]), atol=1e-6)
    resumed.release()


def test_recalibrate_platt_maps_the_query_logit_by_the_held_out_logistic_regression(tiny_models, tmp_path):
    """``recalibrate: platt`` trains as without it, then maps the query's logit by the unpenalised logistic
    regression of the held-out labels on the kept step's held-out logits (checked against scikit-learn, fitted
    here on the unmapped estimator's held-out answers); the map is saved and reloaded with the adapters."""
    import json

    from sklearn.linear_model import LogisticRegression

    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(60)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    settings = dict(learning_rate=1e-2, batch_size=8, epochs=2, eval_every=3, patience=20, keep="calibrated_loss")
    plain = LoraPromptEstimator(lm, LoraPromptConfig(**settings)).fit(seqs, labels)
    raw_eval, raw_val = plain.predict_proba(seqs), plain.val_logits
    plain.release()
    est = LoraPromptEstimator(lm, LoraPromptConfig(**settings, recalibrate="platt")).fit(seqs, labels)
    assert est.log.best_step == plain.log.best_step > 0
    y_val = labels[est.val_indices]
    reference = LogisticRegression(C=np.inf).fit(raw_val[:, None], y_val)
    assert est.recalibration.slope == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert est.recalibration.bias == pytest.approx(reference.intercept_[0], abs=1e-4)
    assert est.recalibration.slope != pytest.approx(1.0, abs=0.05)  # not the identity: the test can tell
    mapped = est.predict_proba(seqs)
    np.testing.assert_allclose(mapped, reference.predict_proba(np.log(raw_eval / (1 - raw_eval))[:, None])[:, 1],
                               atol=1e-5)
    # a logistic regression with an intercept matches the mean P(correct) to the rate of correct answers
    assert expit(est.val_logits).mean() == pytest.approx(y_val.mean(), abs=1e-4)
    est.save(tmp_path / "est")
    est.release()
    info = json.loads((tmp_path / "est" / "lora_prompt.json").read_text())
    assert info["config"]["recalibrate"] == "platt" and set(info["recalibration"]) == {"slope", "bias"}
    loaded = LoraPromptEstimator.load(tmp_path / "est", lm)
    np.testing.assert_allclose(loaded.predict_proba(seqs), mapped, atol=1e-6)
    loaded.release()
    del info["recalibration"]
    (tmp_path / "est" / "lora_prompt.json").write_text(json.dumps(info))
    with pytest.raises(CalibtuneError, match="slope and bias are missing"):
        LoraPromptEstimator.load(tmp_path / "est", lm)


def test_the_recalibration_is_the_identity_when_it_would_reverse_the_ranking():
    from calibtune.estimators.lora_prompt import fit_recalibration

    z = np.linspace(-2, 2, 40)
    y = (z < 0).astype(int)
    y[[0, -1]] = 1 - y[[0, -1]]  # not separable, so the fit is finite
    reversed_fit = fit_recalibration(z, y)
    assert (reversed_fit.slope, reversed_fit.bias) == (1.0, 0.0)
    fitted = fit_recalibration(z, 1 - y)
    assert fitted.slope > 0 and fitted.transform_logit(np.array([0.0]))[0] == pytest.approx(fitted.bias)


def test_calibration_fraction_chooses_the_step_on_one_part_and_calibrates_it_on_the_other(tiny_models):
    """With ``calibration_fraction``, the held-out answers are split in two (stratified, disjoint, together the
    ``validation_split`` held-out set): the step is chosen on one part (step 0's figure is the untrained model's
    loss on that part alone), and the map is the unpenalised logistic regression of the other part's
    labels on the kept adapters' logits (scikit-learn), which are the held-out answers the study calibrates on."""
    from sklearn.linear_model import LogisticRegression

    from calibtune.estimators.adapters import held_out_score
    from calibtune.estimators.lora_prompt import held_out_parts, query_yes_logits
    from calibtune.estimators.splits import validation_split

    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    prompts, answers, labels = separable_toy(80)
    flipped = np.random.default_rng(0).random(80) < 0.2  # so that no part is separable and each fit is finite
    labels = np.where(flipped, 1 - labels, labels)
    seqs = encode_queries(lm.tokenizer, prompts, answers, DEFAULT_QUERY)
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=8, epochs=2, eval_every=3, patience=20,
                           recalibrate="platt", val_fraction=0.4, calibration_fraction=0.5)
    train, choose, calibrate = held_out_parts(labels, cfg, seed=0)
    np.testing.assert_array_equal(train, validation_split(labels, 0.4, 0)[0])
    assert sorted(np.concatenate([choose, calibrate])) == sorted(validation_split(labels, 0.4, 0)[1])
    assert len(calibrate) == 16 and not set(choose) & set(calibrate)
    assert {0, 1} <= set(labels[choose]) and {0, 1} <= set(labels[calibrate])
    assert len(held_out_parts(labels, cfg.model_copy(update={"calibration_fraction": 0.0}), 0)[2]) == 0

    est = LoraPromptEstimator(lm, cfg)
    untrained = query_yes_logits(lm, [seqs[i] for i in choose], est.token_ids)
    est.fit(seqs, labels)
    np.testing.assert_array_equal(est.val_indices, calibrate)
    assert est.log.val_loss[0] == (0, pytest.approx(held_out_score("loss", untrained, labels[choose]), abs=1e-6))
    assert est.log.best_step > 0
    cal_seqs = [seqs[i] for i in calibrate]
    mapped = est.predict_proba(cal_seqs)
    np.testing.assert_allclose(expit(est.val_logits), mapped, atol=1e-6)
    recalibration, est.recalibration = est.recalibration, None
    raw = np.log(est.predict_proba(cal_seqs)) - np.log1p(-est.predict_proba(cal_seqs))
    raw_choose = np.log(est.predict_proba([seqs[i] for i in choose])) - np.log1p(-est.predict_proba(
        [seqs[i] for i in choose]))
    est.release()
    reference = LogisticRegression(C=np.inf).fit(raw[:, None], labels[calibrate])
    assert recalibration.slope == pytest.approx(reference.coef_[0, 0], rel=1e-4)
    assert recalibration.bias == pytest.approx(reference.intercept_[0], abs=1e-4)
    on_choose = LogisticRegression(C=np.inf).fit(raw_choose[:, None], labels[choose])
    assert recalibration.slope != pytest.approx(on_choose.coef_[0, 0], rel=0.05)  # the part matters: the test can tell


def test_a_calibration_part_without_both_classes_is_a_one_line_error():
    from calibtune.estimators.lora_prompt import held_out_parts

    labels = np.array([1, 0] * 10)
    cfg = LoraPromptConfig(val_fraction=0.2, calibration_fraction=0.25)  # 4 held out: a part of 1 cannot hold both
    with pytest.raises(CalibtuneError, match="calibration_fraction 0.25 of the 4 held-out answers"):
        held_out_parts(labels, cfg, 0)
