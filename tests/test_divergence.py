"""The regulariser's divergences: values and gradients against float64 autograd of the textbook formulas."""

from __future__ import annotations

import math

import pytest
import torch

from calibtune.estimators import divergence as module
from calibtune.estimators.divergence import DIVERGENCES, divergence


def _reference(adapted: torch.Tensor, base: torch.Tensor, kind: str) -> torch.Tensor:
    log_q, log_p = torch.log_softmax(adapted, -1), torch.log_softmax(base, -1)
    if kind == "forward_kl":
        rows = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":
        rows = (log_q.exp() * (log_q - log_p)).sum(-1)
    else:
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        rows = 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1))
    return rows.mean()


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("rows", [1, 19])  # one row, and rows that do not fill the last sweep
def test_value_and_gradient_match_float64_autograd(kind, rows, monkeypatch):
    monkeypatch.setattr(module, "ROW_CHUNK", 4)
    gen = torch.Generator().manual_seed(rows)
    adapted = torch.randn(rows, 3000, generator=gen, dtype=torch.float64) * 4
    base = torch.randn(rows, 3000, generator=gen, dtype=torch.float64) * 4
    reference = adapted.clone().requires_grad_()
    expected = _reference(reference, base, kind)
    expected.backward()
    ours = adapted.float().requires_grad_()
    got = divergence(ours, base.float(), kind)
    (got * 3.0).backward()  # an upstream gradient other than 1 flows through
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert ours.grad.dtype == torch.float32
    torch.testing.assert_close(ours.grad.double(), 3.0 * reference.grad, rtol=0, atol=1e-4 * float(
        reference.grad.abs().max()) * 3.0)


def test_bf16_logits_give_a_bf16_gradient_and_no_gradient_reaches_the_base():
    adapted = torch.randn(3, 50).bfloat16().requires_grad_()
    base = torch.randn(3, 50).requires_grad_()
    divergence(adapted, base, "js").backward()
    assert adapted.grad.dtype == torch.bfloat16 and base.grad is None
    with torch.no_grad():  # no gradient wanted: none computed
        assert float(divergence(adapted, adapted.float(), "js")) == pytest.approx(0.0, abs=1e-6)
