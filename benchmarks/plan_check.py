"""A study's dry run against the study itself: each stage's estimated time beside the measured one.

    python benchmarks/plan_check.py [CONFIG] [--quick] -o RUN [--json out.json]

Runs the study in this process (as ``calibtune run`` does), then, for each stage of its plan
(``calibtune.plan.plan_stages``), prints the FLOPs, the estimated seconds and the seconds the
run measured (``timings.json``), and their ratio. The estimate is the dry run's own: on the
CPU from ``machine_rate`` (the rate and utilisation ``benchmarks/run.py`` last recorded here),
on a GPU its H100 figure (the H100's datasheet bf16 rate at ``calibtune.plan.GPU_UTILISATION``;
an H200 has the H100's compute), with this GPU's bf16 matmul rate measured now for reference.
On a GPU it also sets the run's peak allocated memory against the plan's memory per device.
Run it on an empty store: cached stages take no time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peak import matmul_peak

from calibtune.config import StudyConfig, load_config
from calibtune.plan import GPU_UTILISATION, GPUS, MachineRate, machine_rate, memory_per_device, model_info, plan_stages
from calibtune.questions import study_questions


def gpu_rate() -> MachineRate:
    """The dry run's H100 rate and utilisation, with this GPU's bf16 matmul rate measured now named beside it."""
    best = matmul_peak(torch.bfloat16)
    return MachineRate(GPUS["H100 SXM"], GPU_UTILISATION,
                       f"the dry run's H100 figure, {GPUS['H100 SXM'] / 1e12:.0f} TFLOP/s at utilisation "
                       f"{GPU_UTILISATION['inference']:.1%} (inference) and {GPU_UTILISATION['training']:.1%} "
                       f"(training); this GPU's bf16 matmul measured now: {best / 1e12:.0f} TFLOP/s")


def plan_against_run(config: StudyConfig, quick: bool, timings: dict[str, float], rate: MachineRate) -> list[dict]:
    """Each stage of the study's plan: its FLOPs, the estimated seconds at ``rate`` and the measured ones."""
    infos = {name: model_info(name) for name in config.models}
    out = []
    for stage in plan_stages(config, study_questions(config, quick), infos, quick):
        prefix = {"answers": f"answer {stage.model}", "features": f"features {stage.model}"}.get(
            stage.stage, f"{stage.stage} {stage.model} on ")
        measured = sum(v for k, v in timings.items() if k == prefix or k.startswith(prefix))
        kind = "training" if stage.training else "inference"
        out.append({"stage": stage.stage, "model": stage.model, "flops": stage.flops,
                    "estimated_s": stage.flops / (rate.flops * rate.utilisation[kind]), "measured_s": measured})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-o", "--output-path", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from calibtune.study import Study

    config = load_config(args.config)
    cuda = torch.cuda.is_available()
    rate = gpu_rate() if cuda else machine_rate(config.dtype)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    study = Study(config, args.output_path, quick=args.quick, log=lambda msg: print(msg, flush=True))
    study.run()
    stages = plan_against_run(config, args.quick, study.timings, rate)
    print(f"\nrate: {rate.source}")
    print(f"{'stage':34} {'model':30} {'PFLOP':>8} {'estimated':>10} {'measured':>9} {'ratio':>6}")
    for s in stages:
        ratio = s["measured_s"] / s["estimated_s"] if s["estimated_s"] else float("nan")
        print(f"{s['stage']:34.34} {s['model'][-30:]:30} {s['flops'] / 1e15:8.3f} {s['estimated_s']:9.1f}s "
              f"{s['measured_s']:8.1f}s {ratio:6.2f}")
    estimated, measured = sum(s["estimated_s"] for s in stages), sum(s["measured_s"] for s in stages)
    print(f"all stages: estimated {estimated:.1f} s, measured {measured:.1f} s (measured / estimated "
          f"{measured / estimated:.2f}); whole run {study.timings['total']:.1f} s, model loading included")
    result = {"config": str(args.config), "quick": args.quick, "rate": rate.flops, "rate_source": rate.source,
              "stages": stages, "timings": study.timings}
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        plans = {name: memory_per_device(model_info(name), config, 2) for name in config.models}
        result["peak_gib"], result["memory_plan"] = peak, plans
        for name, mem in plans.items():
            print(f"planned per device, {name}: weights {mem['weights']:.1f} GiB + a pass's activations "
                  f"{mem['inference']:.1f} GiB; training state {mem['adapter_state']:.2f} GiB + activations "
                  f"{mem['training_activations']:.1f} GiB")
        print(f"measured peak allocated on {torch.cuda.get_device_name()}: {peak:.1f} GiB (all models of the run)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
