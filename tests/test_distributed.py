"""A study in several processes (torchrun on this CPU, gloo): the same scores as one process, and a killed rank
resumes with any number of processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from calibtune.store import ArtifactStore, list_artifacts
from conftest import write_questions
from toy import separable_toy

METHODS = ("methods: [probe, lora_prompt, zero_shot, option_confidence]\n"
           "probe: {max_epochs: 5, patience: 2}\nlora_prompt: {max_steps: 3, eval_every: 2, batch_size: 4}\n"
           "zero_shot_calibration: 10\n")


def _config(tmp_path, tiny_models, n_train: int = 48, models=("llama", "gemma"), methods: str = METHODS) -> str:
    train = write_questions(tmp_path / "train.jsonl", n=n_train, options=3)
    heldout = write_questions(tmp_path / "heldout.jsonl", n=24, options=3)
    path = tmp_path / "study.yaml"
    path.write_text(f"name: dist\nmodels: {[str(tiny_models[m]) for m in models]}\ndtype: float32\n"
                    f"batch_size: 8\ntrain: [{{dataset: '{train}'}}]\neval: [{{dataset: '{heldout}'}}]\n" + methods)
    return str(path)


def _run(config: str, out, cache, processes: int = 1, wait: bool = True):
    env = {**os.environ, "CALIBTUNE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "calibtune", "run", config, "-o", str(out), "--num-processes", str(processes)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if not wait:
        return proc
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return output


def test_two_processes_give_the_scores_of_one(tmp_path, tiny_models):
    config = _config(tmp_path, tiny_models)
    _run(config, tmp_path / "one", tmp_path / "cache-one", 1)
    output = _run(config, tmp_path / "two", tmp_path / "cache-two", 2)
    assert "rank 1/2: " in output  # both processes worked
    for rank, model in enumerate(("llama", "gemma")):  # each process trained its own model's row of cells
        trained = [line.split(" on ")[0] for line in output.splitlines()
                   if line.startswith(f"rank {rank}/2: LoRA + Prompt ")]
        assert trained == [f"rank {rank}/2: LoRA + Prompt {tiny_models[model]}"] * 2, output
    one = pd.read_parquet(tmp_path / "one" / "scores.parquet")
    two = pd.read_parquet(tmp_path / "two" / "scores.parquet")
    pd.testing.assert_frame_equal(one, two)  # exactly: every artifact is computed by one process the same way
    assert sorted(p.name for p in (tmp_path / "two" / "estimators" / "lora_prompt").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "estimators" / "lora_prompt").iterdir())


def test_a_killed_rank_resumes_with_one_process(tmp_path, tiny_models):
    from calibtune.stages import base

    config = _config(tmp_path, tiny_models, n_train=600)  # 3 answer shards per model
    cache = tmp_path / "cache"
    store = ArtifactStore(cache / "store")
    proc = _run(config, tmp_path / "killed", cache, 2, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not [a for a in list_artifacts(store) if a.stage == "answers" and a.complete]:
        time.sleep(0.1)
    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "calibtune" in " ".join(p.cmdline())]
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    victim.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    done = [a for a in list_artifacts(store) if a.complete]
    assert done and len([a for a in done if a.stage == "answers"]) < 2 * -(-624 // base.SHARD_SIZE)
    _run(config, tmp_path / "killed", cache, 1)  # resumed by a single process
    _run(config, tmp_path / "clean", tmp_path / "cache-clean", 1)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "killed" / "scores.parquet"),
                                  pd.read_parquet(tmp_path / "clean" / "scores.parquet"))


def test_cell_processes_leave_no_process_idle():
    from calibtune.config import cell_processes

    assert cell_processes("auto", 2, 8) == 1  # more cells than processes: one process per cell
    assert cell_processes("auto", 8, 3) == 2  # 8 processes, 3 cells: 4 groups of 2
    assert cell_processes("auto", 2, 1) == 2
    assert cell_processes("auto", 4, 0) == 4
    assert cell_processes(3, 2, 8) == 2  # never more than there are processes
    assert cell_processes("auto", 8, 3, sharded=True) == 8  # FSDP: every process shards every cell's model
    assert cell_processes(2, 8, 3, sharded=True) == 2


@pytest.mark.parametrize("sharding", ["replicate", "fsdp"])
def test_two_processes_train_each_adapter_cell_together_as_one_would(tmp_path, tiny_models, sharding):
    """Data-parallel adapter training (each process takes half of every batch, the gradients summed before each
    step) gives the single process's estimator: P(correct) within 1e-5 (fp32; only the order of the sums
    differs). Dropout is off: with it, each process draws its own masks. With FSDP each process also holds
    half of every decoder layer's weights, gathered while the layer runs: the same numbers."""
    # FSDP also on Gemma (embeddings tied to the head, soft-capped logits) and the read-out variant (the decoder
    # cut below its sharded layers)
    model, readout = ("gemma", "lora_prompt_readout, ") if sharding == "fsdp" else ("llama", "")
    config = _config(tmp_path, tiny_models, models=(model,), methods=(
        f"methods: [lora_prompt, {readout}lora]\ncell_processes: 2\nadapter_sharding: {sharding}\n"
        "lora_prompt: {max_steps: 4, eval_every: 2, batch_size: 4, dropout: 0.0, learning_rate: 0.001}\n"
        "lora_prompt_readout: {max_steps: 4, eval_every: 2, batch_size: 4, dropout: 0.0, learning_rate: 0.001}\n"
        "lora: {max_steps: 4, eval_every: 2, batch_size: 4, dropout: 0.0, head_dropout: 0.0, learning_rate: 0.001}\n"))
    _run(config, tmp_path / "one", tmp_path / "cache-one", 1)
    output = _run(config, tmp_path / "two", tmp_path / "cache-two", 2)
    how = ", the weights sharded (FSDP)" if sharding == "fsdp" else ""
    cells = 3 if sharding == "fsdp" else 2
    assert f"{cells} adapter cells to train, 1 at a time, each by 2 processes together{how}\n" in output
    one = pd.read_parquet(tmp_path / "one" / "scores.parquet")
    two = pd.read_parquet(tmp_path / "two" / "scores.parquet")
    pd.testing.assert_frame_equal(one, two, check_exact=False, atol=1e-5, rtol=0)
    assert sorted(one.method.unique()) == sorted(["lora_prompt", "lora"] + (["lora_prompt_readout"] if readout else []))
    for method, saved in (("lora_prompt", "lora_prompt.json"), ("lora", "lora.json")):
        logs = [json.loads(next((tmp_path / run / "estimators" / method).iterdir()).joinpath(saved).read_text())
                ["train_log"] for run in ("one", "two")]
        assert logs[0]["steps"] == logs[1]["steps"] == 4
        # the losses after the first step, and the held-out losses at steps 2 and 4, depend on the summed
        # gradients of the steps before; the held-out loss is summed over the two processes' shares
        assert logs[0]["train_loss"] == pytest.approx(logs[1]["train_loss"], abs=1e-5)
        assert len(set(logs[0]["train_loss"])) == 4
        assert [v for _, v in logs[0]["val_loss"]] == pytest.approx([v for _, v in logs[1]["val_loss"]], abs=1e-5)


def test_fsdp_training_shards_the_weights_and_resumes_from_its_checkpoint(tmp_path, tiny_models):
    """Two processes train LoRA + Prompt with FSDP: each holds half of the adapters (and of every decoder layer);
    killed after the checkpoint at step 4, they resume to exactly the uninterrupted run's P(correct) and losses,
    and both agree with one process to 1e-5 (fp32)."""
    from calibtune.estimator_settings import LoraPromptConfig
    from calibtune.estimators.lora_prompt import LoraPromptEstimator, encode_queries
    from calibtune.models import load_model

    worker = Path(__file__).parent / "workers" / "fsdp_resume.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(worker), str(tiny_models["llama"]), str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["expected_log"]["held"] == pytest.approx(0.5, abs=0.02)  # half the LoRA weights on each
    assert result["resumed"] == result["expected"]
    assert result["resumed_log"]["train_loss"] == result["expected_log"]["train_loss"]
    assert result["resumed_log"]["val_loss"] == result["expected_log"]["val_loss"]

    prompts, answers, labels = separable_toy(48)
    cfg = LoraPromptConfig(learning_rate=1e-2, batch_size=4, max_steps=8, eval_every=2, patience=10, dropout=0.0)
    lm = load_model(str(tiny_models["llama"]), dtype="float32")
    one = LoraPromptEstimator(lm, cfg).fit(encode_queries(lm.tokenizer, prompts, answers, cfg.query), labels)
    np.testing.assert_allclose(one.predict_proba(encode_queries(lm.tokenizer, prompts, answers, cfg.query)),
                               result["expected"], atol=1e-5, rtol=0)
    assert one.log.train_loss == pytest.approx(result["expected_log"]["train_loss"], abs=1e-5)
