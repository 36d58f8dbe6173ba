"""FLOP counts and the dry run: the counts are checked against torch's own FLOP counter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from calibtune.costs import ModelShape, sequence_flops, training_flops, tree_flops
from calibtune.models import load_model
from calibtune.plan import UTILISATION, machine_rate, save_benchmark_record


@pytest.mark.parametrize("arch", ["llama", "gemma", "qwen"])
def test_flop_counts_match_torchs_flop_counter(tiny_models, arch):
    from torch.utils.flop_counter import FlopCounterMode

    lm = load_model(str(tiny_models[arch]), dtype="float32")
    shape = ModelShape.of(lm.model.config)
    length = 24
    ids = torch.randint(3, 200, (1, length), device=lm.device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        lm.model(ids)
    counts = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = sum(n for op, n in counts.items() if op in ("mm", "addmm", "bmm"))
    # every block's matrices once per token, and the head at every position (the full model computes it);
    # torch's counter has no formula for the CPU attention kernel, which calibtune counts as causal work
    assert linear == length * 2 * shape.block_weights + length * shape.head_flops
    needed = sequence_flops(shape, length) + length * shape.head_flops
    assert needed == linear + shape.layers * 4 * shape.heads * shape.head_dim * length * (length + 1) / 2


def test_a_tree_counts_its_context_once():
    shape = ModelShape(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, head_dim=4, vocab=10)
    context, branches = 10, [3, 5]
    pairwise = sum(sequence_flops(shape, context + m) for m in branches)
    tree = tree_flops(shape, context, branches, predicted=0)
    assert tree < pairwise
    assert tree == pytest.approx(sequence_flops(shape, context)
                                 + sum(m * shape.token_flops(context + (m + 1) / 2) for m in branches))
    assert training_flops(7.0) == 14.0


def test_the_paper_study_is_planned_offline_without_loading_a_model(tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from calibtune.cli import app; "
            "r = CliRunner().invoke(app, ['run', 'configs/paper-7b.yaml', '--dry-run']); print(r.output); "
            "print('exit', r.exit_code, 'torch' in sys.modules)")
    env = {"HF_HUB_OFFLINE": "1", "CALIBTUNE_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=__file__.rsplit("/tests/", 1)[0], timeout=120).stdout
    assert out.strip().endswith("exit 0 False"), out
    assert "mistralai/Mistral-7B-v0.1: 32 layers, hidden 4096, 7.24B parameters" in out
    assert "meta-llama/Llama-2-7b-hf: 32 layers, hidden 4096, 6.74B parameters" in out
    assert "lora_prompt" in out and "5000 steps each" in out and "H100 SXM" in out
    assert "weights 13.5 GiB" in out  # 7.24B bf16 values
    # with processes, the plan says how the study deals them out (and launches nothing)
    code = code.replace("'--dry-run']", "'--dry-run', '--num-processes', '16']")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=__file__.rsplit("/tests/", 1)[0], timeout=120).stdout
    assert out.strip().endswith("exit 0 False"), out
    assert "4 adapter cells trained 4 at a time, each by a group of 4 processes together" in out


def test_the_process_plan_divides_each_stage_by_the_processes_that_share_it():
    from calibtune.config import StudyConfig
    from calibtune.plan import GPU_UTILISATION, GPUS, StagePlan, _duration, process_plan

    config = StudyConfig.model_validate({"models": ["smollm2-135m"], "train": [{"dataset": "arc_easy"}],
                                         "eval": [{"dataset": "sciq"}]})
    stages = [StagePlan("answers", "m", "100 questions", 4e15), StagePlan("lora_prompt", "m", "3 cells, 9 steps each",
                                                                          6e15, training=True, cells=3)]
    rate = GPUS["L4"]
    one = 4e15 / (rate * GPU_UTILISATION["inference"]) + 6e15 / (rate * GPU_UTILISATION["training"])
    text = "\n".join(process_plan(config, stages, 8, {g: one for g in GPUS}))
    infer, train = 4e15 / (rate * GPU_UTILISATION["inference"]), 6e15 / (rate * GPU_UTILISATION["training"])
    # 8 processes, 3 cells: groups of 2, all 3 cells at once (one group idle), each split 2 ways
    assert "3 adapter cells trained 4 at a time, each by a group of 2 processes together" in text
    assert f"L4 {_duration(infer / 8 + train / 3 / 2)}" in text
    fixed = config.model_copy(update={"cell_processes": 1})
    text = "\n".join(process_plan(fixed, stages, 8, {g: one for g in GPUS}))
    assert "3 adapter cells dealt one per process" in text
    assert f"L4 {_duration(infer / 8 + train / 3)}" in text  # one process per cell: all 3 at once, none split


def test_the_process_plan_gives_each_process_whole_rows_when_the_models_divide_evenly():
    from calibtune.config import StudyConfig
    from calibtune.distributed import row_owners
    from calibtune.plan import GPU_UTILISATION, GPUS, StagePlan, _duration, process_plan

    assert row_owners(["a", "b"], 2) == {"a": 0, "b": 1}
    assert row_owners(["a", "b", "c", "d"], 2) == {"a": 0, "b": 1, "c": 0, "d": 1}
    assert row_owners(["a", "b", "c"], 2) is None  # a remainder: cells are dealt by position
    assert row_owners(["a", "b"], 4) is None and row_owners(["a", "b"], 1) is None
    config = StudyConfig.model_validate({"models": ["smollm2-135m", "gemma3-270m"],
                                         "train": [{"dataset": "arc_easy"}], "eval": [{"dataset": "sciq"}]})
    rate = GPUS["L4"]
    train = {"smollm2-135m": 2e15, "gemma3-270m": 5e15}
    stages = [StagePlan("answers", "smollm2-135m", "100 questions", 4e15)] + [
        StagePlan("lora_prompt", model, "2 cells, 9 steps each", flops, training=True, cells=2)
        for model, flops in train.items()]
    text = "\n".join(process_plan(config, stages, 2, {g: 1.0 for g in GPUS}))
    assert "the other cells one per process; each process takes whole rows of the matrix (every cell of an " \
           "estimator model): smollm2-135m process 0, gemma3-270m process 1" in text
    infer = 4e15 / (rate * GPU_UTILISATION["inference"])
    # the process with Gemma's row finishes last: its two cells, not half of all four
    assert f"L4 {_duration(infer / 2 + 5e15 / (rate * GPU_UTILISATION['training']))}" in text


def test_the_plan_counts_no_pass_the_study_shares_or_stops_early():
    from calibtune.config import StudyConfig
    from calibtune.plan import model_info, plan_stages
    from calibtune.questions import StudyInputs
    from calibtune.records import Question

    questions = [Question(id=f"q{i}", dataset="d", split="train", text="Why is the sky blue?", choices=("a", "b"),
                          gold=0) for i in range(20)]
    inputs = StudyInputs(questions[:16], questions[16:])
    infos = {"smollm2-135m": model_info("smollm2-135m")}
    base = {"models": ["smollm2-135m"], "train": [{"dataset": "arc_easy"}], "eval": [{"dataset": "sciq"}]}
    shared = StudyConfig.model_validate({**base, "methods": ["lora_prompt", "lora_prompt_readout", "zero_shot"],
                                         "lora_prompt_readout": {"readout_layer": 10}})
    by = {s.stage: s.flops for s in plan_stages(shared, inputs, infos, False)}
    assert by["zero_shot"] == 0  # its P(correct) comes from LoRA + Prompt's base pass
    assert abs(by["lora_prompt_readout"] / by["lora_prompt"] - 10 / 30) < 0.02  # 10 of SmolLM2's 30 layers
    # a step of adapters on the top half runs the upper 15 of 30 layers (those below are read once by the base pass)
    step = {}
    for layers in ("all", "top_half"):
        flops = [{s.stage: s.flops for s in plan_stages(StudyConfig.model_validate(
            {**base, "methods": ["lora_prompt"], "lora_prompt": {"layers": layers, "max_steps": n}}), inputs, infos,
            False)}["lora_prompt"] for n in (1, 2)]
        step[layers] = flops[1] - flops[0]
    assert step["top_half"] == pytest.approx(step["all"] / 2, rel=1e-12) and step["all"] > 0
    # the Probe's features of any model's cloze answers come from the estimator model's answering pass; averaged
    # over the answer's tokens they do not, and then take a pass of their own per answering model
    two = {"smollm2-135m": infos["smollm2-135m"], "gemma3-270m": model_info("gemma3-270m")}
    planned = {}
    for token in ("last", "mean"):
        probe = StudyConfig.model_validate({**base, "models": list(two), "methods": ["probe"],
                                            "features": {"token": token}})
        planned[token] = [(s.model, s.items) for s in plan_stages(probe, inputs, two, False) if s.stage == "features"]
    assert planned == {"last": [], "mean": [(m, "2 x 20 answers") for m in two]}
    alone = StudyConfig.model_validate({**base, "methods": ["zero_shot"]})
    assert [s.flops > 0 for s in plan_stages(alone, inputs, infos, False) if s.stage == "zero_shot"] == [True]


def test_the_plan_takes_this_cpus_rates_from_the_last_benchmark_on_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBTUNE_CACHE", str(tmp_path))
    rows = [{"pass": "cloze scoring", "mfu": 0.5}, {"pass": "feature extraction", "mfu": 0.3},
            {"pass": "generation", "mfu": 0.1}, {"pass": "LoRA + Prompt training", "mfu": 0.4},
            {"pass": "LoRA training", "mfu": 0.2}]
    record = save_benchmark_record("torch.bfloat16", 2e12, rows, "abc1234")
    rate = machine_rate("auto")
    assert rate.flops == 2e12
    assert rate.utilisation == pytest.approx({"inference": 0.4, "training": 0.3})  # generation is not cloze
    assert "bfloat16 matmul 2000 GFLOP/s" in rate.source and "abc1234" in rate.source
    assert machine_rate("bf16").flops == 2e12
    assert machine_rate("float32").utilisation == UTILISATION  # an fp32 study is not planned at bf16's rate
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "cpu": "another CPU, 64 cores"}))
    assert machine_rate("auto").utilisation == UTILISATION


def test_the_plan_counts_the_weights_fsdp_leaves_on_a_device_while_training():
    """With FSDP over 4 processes a device holds a quarter of the decoder layers' weights and one layer gathered
    while it runs; the embeddings and LM head whole; a quarter of the adapters' training state."""
    from calibtune.config import StudyConfig
    from calibtune.plan import memory_per_device, model_info

    config = StudyConfig.model_validate({"models": ["mistralai/Mistral-7B-v0.1"], "train": [{"dataset": "arc_easy"}],
                                         "eval": [{"dataset": "sciq"}]})
    info = model_info("mistralai/Mistral-7B-v0.1")
    whole, four = memory_per_device(info, config, 2), memory_per_device(info, config, 2, shards=4)
    assert whole["training_weights"] == whole["weights"]
    blocks = info.shape.block_weights * 2 / 2**30
    assert four["training_weights"] == pytest.approx(whole["weights"] - blocks * 3 / 4 + blocks / 32)
    assert four["adapter_state"] == pytest.approx(whole["adapter_state"] / 4)
    assert 4.0 < four["training_weights"] < 4.2  # of 13.5 GiB whole
