"""LoRA + Prompt's divergence and its gradient: calibtune's row sweeps against autograd of the same formula.

    .venv/bin/python benchmarks/divergence.py [--rows 40] [--vocab 262144] [--repeat 5]

The defaults are one training batch of Gemma-3: 8 answers of about 5 tokens, over its
262,144-word vocabulary. Prints milliseconds per value-and-gradient for each divergence,
and the largest gradient difference between the two relative to the gradient's size.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from calibtune.estimators.divergence import DIVERGENCES, divergence


def autograd_divergence(adapted: torch.Tensor, base: torch.Tensor, kind: str) -> torch.Tensor:
    """The formula as autograd would run it (calibtune's implementation before the row sweeps)."""
    log_q = torch.log_softmax(adapted.float(), dim=-1)
    log_p = torch.log_softmax(base.float(), dim=-1)
    if kind == "forward_kl":
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    if kind == "reverse_kl":
        return (log_q.exp() * (log_q - log_p)).sum(-1).mean()
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    return 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1)).mean()


def timed(fn, adapted: torch.Tensor, base: torch.Tensor, kind: str, repeat: int) -> tuple[float, torch.Tensor]:
    x = adapted.clone().requires_grad_()
    fn(x, base, kind).backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        x.grad = None
        fn(x, base, kind).backward()
    return (time.perf_counter() - start) / repeat, x.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40)
    parser.add_argument("--vocab", type=int, default=262144)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    adapted = (torch.randn(args.rows, args.vocab, generator=gen) * 3).bfloat16().float()
    base = (torch.randn(args.rows, args.vocab, generator=gen) * 3).bfloat16().float()
    print(f"{args.rows} rows x {args.vocab} words, {torch.get_num_threads()} threads")
    print(f"{'divergence':12} {'autograd ms':>12} {'calibtune ms':>13} {'speed-up':>9} {'max grad diff':>14}")
    for kind in DIVERGENCES:
        slow, g_slow = timed(autograd_divergence, adapted, base, kind, args.repeat)
        fast, g_fast = timed(divergence, adapted, base, kind, args.repeat)
        diff = float((g_fast - g_slow).abs().max() / g_slow.abs().max())
        print(f"{kind:12} {slow * 1e3:12.1f} {fast * 1e3:13.1f} {slow / fast:8.1f}x {diff:14.1e}")


if __name__ == "__main__":
    main()
