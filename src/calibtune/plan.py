"""``calibtune run --dry-run``: what a study will do and cost, before any model is loaded.

The plan counts the stages, questions and cells the study would run, the FLOPs of each stage
(``calibtune.costs``, from each model's shape), the memory a device needs (weights,
activations of one pass, the adapters' training state) and the time each stage would take
on a few GPU types and on this machine. A model's shape comes from its ``config.json``
(a local folder, a bundled model's converted folder, or the local hub cache) or, for the
paper's models, from the table below: no network, no weights. Token counts come from the
model's tokenizer where one is on this machine, else from 4 characters per token.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from calibtune.bundled import cache_dir
from calibtune.config import StudyConfig, cell_processes, method_settings
from calibtune.costs import HEAD_CHUNK, ModelShape, sequence_flops, training_flops, tree_flops
from calibtune.distributed import row_owners
from calibtune.errors import CalibtuneError
from calibtune.methods import METHODS
from calibtune.methods.adapters import quick_training_size
from calibtune.prompts import format_prompt
from calibtune.questions import StudyInputs, study_questions, training_subsets
from calibtune.settings import DTYPE_NAMES

# Published configs of models a study may name by hub id before they are downloaded.
KNOWN_CONFIGS: dict[str, dict] = {
    "mistralai/Mistral-7B-v0.1": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336,
                                      num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                      vocab_size=32000, tie_word_embeddings=False, model_type="mistral"),
    "meta-llama/Llama-2-7b-hf": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=11008,
                                     num_attention_heads=32, num_key_value_heads=32, head_dim=128, vocab_size=32000,
                                     tie_word_embeddings=False, model_type="llama"),
    "smollm2-135m": dict(num_hidden_layers=30, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                         model_type="llama"),
    "gemma3-270m": dict(num_hidden_layers=18, hidden_size=640, intermediate_size=2048, num_attention_heads=4,
                        num_key_value_heads=1, head_dim=256, vocab_size=262144, tie_word_embeddings=True,
                        model_type="gemma3_text"),
}
KNOWN_CONFIGS["mistralai/Mistral-7B-Instruct-v0.2"] = KNOWN_CONFIGS["mistralai/Mistral-7B-v0.1"]
KNOWN_CONFIGS["meta-llama/Llama-2-7b-chat-hf"] = KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"]

# Dense bf16 matmul rate of each GPU (the vendors' figures), and the share of it the study's passes reach
# there: measured on an H200 (the H100's compute) with a Mistral-7B-shaped model through a study at the paper's
# batch sizes (benchmarks/gpu_check.sh, README "Scaling out"): answering 6.2% and LoRA + Prompt 3.1% of 989
# TFLOP/s. Batches of a few short sequences leave a 7B model's products small, so launches and the
# per-step work outside them dominate. The A100 and L4 are assumed to reach the same share (not measured).
GPUS = {"A100 80GB": 312e12, "H100 SXM": 989e12, "L4": 121e12}
GPU_UTILISATION = {"inference": 0.062, "training": 0.031}
# The share of a CPU's matmul rate assumed reached where benchmarks/run.py has not measured it.
UTILISATION = {"inference": 0.40, "training": 0.30}
CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class ModelInfo:
    """What the plan knows of one model: its shape, weights and how it counts tokens."""

    name: str
    shape: ModelShape
    parameters: int
    tokenizer: object | None  # None: 4 characters per token

    def tokens(self, text: str, special: bool = True) -> int:
        """Tokens of a text (estimated when no tokenizer is at hand)."""
        if self.tokenizer is None:
            return max(1, round(len(text) / CHARS_PER_TOKEN)) + int(special)
        return len(self.tokenizer(text, add_special_tokens=special)["input_ids"])


@dataclass(frozen=True)
class StagePlan:
    """One stage of the plan: what it runs, its FLOPs, and whether it trains."""

    stage: str
    model: str
    items: str
    flops: float
    training: bool = False
    cells: int = 0  # the cells it trains (adapter stages)


def _local_config(name: str) -> dict | None:
    from calibtune.bundled import BUNDLED, converted_dir

    folder = Path(name).expanduser()
    if name in BUNDLED:
        folder = converted_dir(BUNDLED[name])
    if folder.is_dir() and (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text())
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    except Exception:  # not a hub id, or no hub cache
        pass
    return None


def _local_tokenizer(name: str):
    """The model's tokenizer when its files are on this machine (no network), else None."""
    from calibtune.bundled import BUNDLED, converted_dir

    folder = converted_dir(BUNDLED[name]) if name in BUNDLED else Path(name).expanduser()
    if not (folder / "tokenizer_config.json").is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str):
                return None
        except Exception:  # not a hub id
            return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else name, local_files_only=True)
    except Exception:  # unreadable: estimate
        return None


def model_info(name: str) -> ModelInfo:
    """Shape, parameter count and tokenizer of a model, from local files or the known configs."""
    config = _local_config(name) or KNOWN_CONFIGS.get(name)
    if config is None:
        raise CalibtuneError(f"cannot plan model '{name}' without its config.json: give a local folder, put the "
                             f"model in the hub cache, or name a known model ({', '.join(KNOWN_CONFIGS)})")
    text = config.get("text_config", config)
    shape = ModelShape.of(text)
    embedding = shape.vocab * shape.hidden
    parameters = shape.block_weights + embedding * (1 if text.get("tie_word_embeddings", True) else 2)
    return ModelInfo(name, shape, parameters, _local_tokenizer(name))


def plan_stages(config: StudyConfig, inputs: StudyInputs, infos: dict[str, ModelInfo], quick: bool) -> list[StagePlan]:
    """The stages of the study with their FLOPs."""
    stages: list[StagePlan] = []
    questions = inputs.all
    prompt_tokens: dict[str, list[int]] = {}
    for name, info in infos.items():
        contexts = [info.tokens(format_prompt(q, config.prompt)) for q in questions]
        prompt_tokens[name] = contexts
        if config.task == "multiple_choice":
            options = [[info.tokens(config.option_prefix + c, special=False) for c in q.choices] for q in questions]
            flops = sum(tree_flops(info.shape, c, o) for c, o in zip(contexts, options))
        else:
            new = config.open_ended.max_new_tokens
            flops = sum(sequence_flops(info.shape, c + new) + new * info.shape.head_flops for c in contexts)
        stages.append(StagePlan("answers", name, f"{len(questions)} questions", flops))
    for part in training_subsets(inputs, config.train_sizes, config.seed, quick):
        stages += _cell_stages(config, part, infos, prompt_tokens, quick)
    return stages


ADAPTER_METHODS = ("lora", "lora_prompt", "lora_prompt_readout")
QUERY_TOKENS = 24  # the uncertainty query after the answer


def _cell_stages(config: StudyConfig, inputs: StudyInputs, infos: dict[str, ModelInfo],
                 prompt_tokens: dict[str, list[int]], quick: bool) -> list[StagePlan]:
    """Features and cells of every (method, E, T), for one training set."""
    stages = []
    size = f" ({len(inputs.train)} training answers)" if config.train_sizes else ""
    n_all = len(inputs.all)
    reads_features = any("features" in METHODS[m].study_settings for m in config.methods)
    for e, info in infos.items():
        lengths = [c + 4 for c in prompt_tokens[e]]  # the prompt and a short answer
        mean_len = sum(lengths) / len(lengths)
        # E's cloze answering pass reads every option, so it gives the features of every model's answers
        if reads_features and not (config.task == "multiple_choice" and config.features.token == "last"):
            flops = len(infos) * sum(sequence_flops(info.shape, n) for n in lengths)
            stages.append(StagePlan("features", e, f"{len(infos)} x {n_all} answers", flops))
        for method in config.methods:
            m = METHODS[method]
            settings = method_settings(config, method)
            cells = len(infos) if m.scope == "matrix" else 1
            if method in ADAPTER_METHODS:
                cap = settings.max_train_examples
                if quick:
                    cap = quick_training_size(config.quick.adapter_steps, settings)
                train = len(inputs.train) if cap is None else min(cap, len(inputs.train))
                steps = max(1, round(settings.epochs * train * (1 - settings.val_fraction) / settings.batch_size))
                steps = min(steps, settings.max_steps or steps, config.quick.adapter_steps if quick else steps)
                seq = round(mean_len) + (QUERY_TOKENS if method != "lora" else 0)
                depth = None  # the passes of a read-out at a layer, and of LoRA's head, stop there
                if method in ("lora", "lora_prompt_readout"):
                    layer = getattr(settings, "readout_layer", getattr(settings, "layer", -1))
                    depth = info.shape.layers // 2 if layer in ("auto", -1) else int(layer)
                trained = depth if depth is not None else info.shape.layers
                if getattr(settings, "layers", "all") == "top_half":  # the layers below the adapters run once
                    trained -= trained // 2
                step = training_flops(settings.batch_size * sequence_flops(info.shape, seq, trained))
                scored = len(inputs.eval) + len(inputs.calibrate) + train  # base pass, predictions
                reads = scored * sequence_flops(info.shape, seq, depth)
                stages.append(StagePlan(f"{method}{size}", e, f"{cells} cells, {steps} steps each",
                                        cells * (steps * step + reads), training=True, cells=cells))
            elif method == "zero_shot":
                if "lora_prompt" in config.methods and (settings.query, settings.options) == (
                        config.lora_prompt.query, config.lora_prompt.options):
                    stages.append(StagePlan(f"{method}{size}", e, f"{cells} cells, from LoRA + Prompt's base pass",
                                            0.0))
                    continue
                n = len(inputs.eval) + (len(inputs.calibrate) if inputs.calibrate
                                        else min(config.zero_shot_calibration, len(inputs.train)))
                flops = cells * n * sequence_flops(info.shape, round(mean_len) + QUERY_TOKENS)
                stages.append(StagePlan(f"{method}{size}", e, f"{cells} cells", flops))
    return stages


def memory_per_device(info: ModelInfo, config: StudyConfig, bytes_per_value: int,
                      shards: int = 1) -> dict[str, float]:
    """GiB a device holds: the weights, one inference pass's activations, and the adapters' training state (all
    of it 1/``shards`` when FSDP shards the training over that many processes), and the weights while training:
    the decoder layers' 1/``shards`` and one layer gathered, the rest whole."""
    shape = info.shape
    weights = info.parameters * bytes_per_value
    layer = shape.block_weights / shape.layers
    training_weights = (info.parameters - shape.block_weights + shape.block_weights / shards
                        + (layer if shards > 1 else 0)) * bytes_per_value
    logits = HEAD_CHUNK * shape.vocab * 4  # one chunk of the head's fp32 logits
    inference = config.token_budget * shape.hidden * bytes_per_value * (shape.layers + 8) + logits
    settings = method_settings(config, "lora_prompt")
    per_layer = 2 * settings.r * (shape.hidden + shape.heads * shape.head_dim)  # q_proj and v_proj adapters
    adapters = shape.layers * per_layer
    adapter_state = adapters * (4 + 4 + 8) / shards  # fp32 weights, gradients, AdamW moments
    tokens = settings.batch_size * 128
    activations = tokens * shape.layers * (16 * shape.hidden + 2 * shape.intermediate) * bytes_per_value
    gib = 2**30
    return {"weights": weights / gib, "inference": inference / gib, "adapter_state": adapter_state / gib,
            "training_activations": activations / gib, "training_weights": training_weights / gib}


@dataclass(frozen=True)
class MachineRate:
    """How fast this machine runs the study's passes: a matmul rate, the utilisation each kind of pass reaches,
    and where both come from."""

    flops: float
    utilisation: dict[str, float]
    source: str


BENCHMARK_RECORD = "benchmark.json"
INFERENCE_PASSES = ("cloze scoring", "feature extraction")
TRAINING_PASSES = ("LoRA + Prompt training", "LoRA training")


def cpu_identity() -> str:
    """This CPU's model name and core count, read without torch (the benchmark record is kept per CPU)."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def save_benchmark_record(dtype: str, matmul_flops: float, rows: list[dict], commit: str) -> Path:
    """Keep the benchmark's matmul rate and mean utilisation per kind of pass in the cache, for the dry run."""
    utilisation = {kind: sum(r["mfu"] for r in rows if r["pass"] in passes) / n
                   for kind, passes in (("inference", INFERENCE_PASSES), ("training", TRAINING_PASSES))
                   if (n := sum(r["pass"] in passes for r in rows))}
    path = cache_dir() / BENCHMARK_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cpu": cpu_identity(), "dtype": dtype.removeprefix("torch."),
                                "matmul_flops": matmul_flops, "utilisation": utilisation, "commit": commit},
                               indent=2))
    return path


def machine_rate(dtype: str = "auto") -> MachineRate:
    """The rate the plan divides this CPU's FLOPs by. The last ``benchmarks/run.py`` on this CPU recorded the
    measured matmul rate in the dtype ``auto`` chose and the utilisation the passes reached; without such a
    record (or for another dtype), an fp32 matmul measured now with numpy and the assumed utilisations."""
    try:
        record = json.loads((cache_dir() / BENCHMARK_RECORD).read_text())
    except (OSError, ValueError):
        record = None
    wanted = record and record.get("dtype") if dtype == "auto" else DTYPE_NAMES.get(dtype, dtype)
    if (record and record.get("cpu") == cpu_identity() and record.get("dtype") == wanted
            and set(record.get("utilisation", {})) == set(UTILISATION)):
        return MachineRate(record["matmul_flops"], record["utilisation"],
                           f"{record['dtype']} matmul {record['matmul_flops'] / 1e9:.0f} "
                           f"GFLOP/s and utilisation {record['utilisation']['inference']:.0%} for inference, "
                           f"{record['utilisation']['training']:.0%} for training, from benchmarks/run.py "
                           f"at {record['commit']}")
    rate = _numpy_fp32_rate()
    return MachineRate(rate, UTILISATION,
                       f"fp32 matmul {rate / 1e9:.0f} GFLOP/s (numpy, measured now) at the "
                       f"assumed utilisation; run benchmarks/run.py --quick once to plan from this CPU's "
                       f"measured rates (a CPU with fast bf16 runs the study well above this estimate)")


def _numpy_fp32_rate() -> float:
    """This machine's fp32 matmul rate, measured now with numpy (a third of a second; torch is not imported,
    so the plan stays fast)."""
    import numpy as np

    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a @ a
    best, end = 0.0, time.perf_counter() + 0.3
    while time.perf_counter() < end:
        start = time.perf_counter()
        a @ a
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def dry_run(config: StudyConfig, quick: bool = False, processes: int = 1) -> str:
    """The plan of a study as text: stages, counts, FLOPs, memory and time estimates; with ``processes``, how
    the processes share the work (``process_plan``)."""
    inputs = study_questions(config, quick)
    infos = {name: model_info(name) for name in config.models}
    stages = plan_stages(config, inputs, infos, quick)
    machine = machine_rate(config.dtype)
    calibration = f", {len(inputs.calibrate)} calibration questions" if inputs.calibrate else ""
    lines = [f"study {config.name}: {len(inputs.train)} training and {len(inputs.eval)} evaluation questions"
             f"{calibration}, {len(config.models)} models, methods {', '.join(config.methods)}"]
    for name, info in infos.items():
        counted = "its tokenizer" if info.tokenizer is not None else f"{CHARS_PER_TOKEN} characters per token"
        lines.append(f"  {name}: {info.shape.layers} layers, hidden {info.shape.hidden}, "
                     f"{info.parameters / 1e9:.2f}B parameters; tokens counted by {counted}")
    header = f"{'stage':34} {'model':28} {'work':34} {'PFLOP':>8}" + "".join(f" {g:>10}" for g in GPUS)
    lines += ["", header + f" {'this CPU':>10}"]
    total = {g: 0.0 for g in [*GPUS, "cpu"]}
    for stage in stages:
        kind = "training" if stage.training else "inference"
        times = {g: stage.flops / (rate * GPU_UTILISATION[kind]) for g, rate in GPUS.items()}
        times["cpu"] = stage.flops / (machine.flops * machine.utilisation[kind])
        for g, t in times.items():
            total[g] += t
        lines.append(f"{stage.stage:34.34} {stage.model:28.28} {stage.items:34.34} {stage.flops / 1e15:8.3f}"
                     + "".join(f" {_duration(times[g]):>10}" for g in [*GPUS, "cpu"]))
    lines.append(f"{'total':98}" + "".join(f" {_duration(total[g]):>10}" for g in [*GPUS, "cpu"]))
    lines.append("")
    rates = ", ".join(f"{g} {r / 1e12:.0f}" for g, r in GPUS.items())
    lines.append(f"time = FLOPs / (rate x utilisation): GPUs at bf16 dense rates {rates} TFLOP/s and the utilisation "
                 f"measured on an H200 with a Mistral-7B shape, {GPU_UTILISATION['inference']:.1%} for inference and "
                 f"{GPU_UTILISATION['training']:.1%} for training (the A100's and L4's assumed alike); this CPU at "
                 f"{machine.source}")
    if processes > 1:
        lines += process_plan(config, stages, processes, total)
    bytes_per_value = 4 if DTYPE_NAMES.get(config.dtype) == "float32" else 2  # auto: bf16 on the GPUs planned for
    cells = sum(s.cells for s in stages)
    group = (cell_processes(config.cell_processes, processes, cells, config.adapter_sharding == "fsdp")
             if processes > 1 else 1)
    shards = group if config.adapter_sharding == "fsdp" else 1
    for name, info in infos.items():
        mem = memory_per_device(info, config, bytes_per_value, shards)
        sharded = (f"; while training, with FSDP over {shards} processes, weights {mem['training_weights']:.1f} "
                   "GiB (the decoder layers sharded, the embeddings and LM head whole)" if shards > 1 else "")
        lines.append(f"memory per device, {name}: weights {mem['weights']:.1f} GiB, a pass's activations "
                     f"{mem['inference']:.1f} GiB, adapter training state {mem['adapter_state']:.2f} GiB and "
                     f"activations {mem['training_activations']:.1f} GiB ({bytes_per_value}-byte values){sharded}")
    return "\n".join(lines)


def process_plan(config: StudyConfig, stages: list[StagePlan], processes: int, total: dict[str, float]) -> list[str]:
    """How ``processes`` share the study, as the study deals it out: questions sharded across all of them;
    adapter cells trained by groups of ``cell_processes`` (``config.cell_processes``); the other cells one per
    process. GPU times assume one device per process and perfect sharding; processes on one CPU share its cores."""
    cells = sum(s.cells for s in stages)
    group = cell_processes(config.cell_processes, processes, cells, config.adapter_sharding == "fsdp")
    groups = processes // group
    lines = ["", f"with {processes} processes: every question stage sharded {processes} ways by global rank; "
             + (f"{cells} adapter cells trained {groups} at a time, each by a group of {group} processes together "
                f"(cell_processes: {config.cell_processes}), each member computing 1/{group} of every batch"
                + (" and holding 1/{group} of the decoder layers (adapter_sharding: fsdp; every member runs every "
                   "validation and scoring pass, and the layers' all-gathers are not counted)".format(group=group)
                   if config.adapter_sharding == "fsdp" else "") + "; "
                if group > 1 else f"{cells} adapter cells dealt one per process (cell_processes: "
                                  f"{config.cell_processes}); ")
             + "the other cells one per process"]
    rows = row_owners(config.models, processes) if group == 1 else None
    if rows is not None:
        lines[-1] += ("; each process takes whole rows of the matrix (every cell of an estimator model): "
                      + ", ".join(f"{model} process {owner}" for model, owner in rows.items()))
    def seconds(stage: StagePlan, rate: float) -> float:
        return stage.flops / (rate * GPU_UTILISATION["training" if stage.training else "inference"])

    def training(rate: float) -> float:
        if rows is not None:  # whole rows to a process: the busiest process's rows
            return max(sum(seconds(s, rate) for s in stages if s.training and rows[s.model] == owner)
                       for owner in range(processes))
        # the cells are dealt to the groups in rounds, each cell split across its group's members
        rounds = -(-cells // groups) if cells else 0
        return sum(seconds(s, rate) for s in stages if s.training) / max(1, cells) * rounds / group

    parallel = {g: sum(seconds(s, rate) / processes for s in stages if not s.training) + training(rate)
                for g, rate in GPUS.items()}
    lines.append(f"estimated total with {processes} processes, one GPU each: "
                 + ", ".join(f"{g} {_duration(parallel[g])}" for g in GPUS)
                 + f" (one process: {', '.join(_duration(total[g]) for g in GPUS)}); on this CPU the processes "
                 "share its cores, so the time is not divided by them")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
