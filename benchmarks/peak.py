"""The matmul rate the benchmarks measure utilisation against: torch's, in the pass's dtype, on this machine.

``calibtune.plan`` measures its own fp32 rate with numpy so that a dry run does not import torch.
"""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """FLOP/s of a large square matrix product in ``dtype`` on this machine, best of a few timed runs."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 4096 if device == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    best = 0.0
    with torch.inference_mode():
        torch.mm(a, b)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            torch.mm(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best
