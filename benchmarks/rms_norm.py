"""calibtune's fused RMSNorm (``calibtune.models.fuse_rms_norms``) against transformers' own code.

    .venv/bin/python benchmarks/rms_norm.py smollm2-135m [--dtype auto] [--rounds 5]

Alternates the two in one process, ``--rounds`` times: each round times a forward pass of the
decoder without gradients and a forward and backward pass (as a training step makes), over
8 x 96 tokens, once with each norm. Prints the median times and each round's ratio (the host's
speed drifts, so read the ratios within a round).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from calibtune.models import fuse_rms_norms, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lm = load_model(args.model, dtype=args.dtype, fused_norms=False)
    decoder = lm.model.model
    norms = [m for m in lm.model.modules() if type(m).__name__.endswith("RMSNorm")]
    torch.manual_seed(0)
    ids = torch.randint(100, 20000, (8, 96))
    embeds = lm.model.get_input_embeddings()(ids).detach()

    def forward() -> None:
        with torch.no_grad():
            decoder(inputs_embeds=embeds)

    def step() -> None:
        leaf = embeds.clone().requires_grad_(True)
        decoder(inputs_embeds=leaf).last_hidden_state.float().square().mean().backward()

    def use(fused: bool) -> None:
        if fused:
            fuse_rms_norms(lm.model)
        else:
            for norm in norms:
                vars(norm).pop("forward", None)

    times = {(p, fused): [] for p in ("forward", "step") for fused in (False, True)}
    for _ in range(args.rounds):
        for fused in (False, True):
            use(fused)
            for name, run in (("forward", forward), ("step", step)):
                run()  # warm-up
                start = time.perf_counter()
                run()
                times[(name, fused)].append(time.perf_counter() - start)
    print(f"{args.model}, {lm.dtype}, {torch.get_num_threads()} threads, {len(norms)} RMSNorms")
    for name in ("forward", "step"):
        plain, fused = times[(name, False)], times[(name, True)]
        ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(plain, fused))
        print(f"  {name:8s} transformers {statistics.median(plain):.3f} s, fused {statistics.median(fused):.3f} s, "
              f"speed-up {statistics.median(plain) / statistics.median(fused):.2f}x (per round: {ratios})")


if __name__ == "__main__":
    main()
