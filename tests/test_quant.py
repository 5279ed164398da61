"""QCFS (Bu et al., ICLR 2022): forward values and gradients against hand-computed numbers, the reference
``qcfs()`` and a naive straight-through implementation written with autograd primitives."""
from __future__ import annotations

import pytest
import torch

from ann2snn.quant import QCFS, qcfs

# L = 4, λ = 2: x·L/λ = 2x.  Worked by hand:
#   x           -1     0.2    0.3    0.74   1.3    2.1    5
#   2x + 1/2    -1.5   0.9    1.1    1.98   3.1    4.7    10.5
#   floor       -2     0      1      1      3      4      10
#   s = floor/L -0.5   0      0.25   0.25   0.75   1      2.5     (unclipped, units of λ)
#   q = clamp   0      0      0.25   0.25   0.75   1      1
#   y = λ·q     0      0      0.5    0.5    1.5    2      2
# inside [0, 1]: no     yes    yes    yes    yes    yes    no    (2.1 → s = 1 exactly: inside)
X = [-1.0, 0.2, 0.3, 0.74, 1.3, 2.1, 5.0]
Y = [0.0, 0.0, 0.5, 0.5, 1.5, 2.0, 2.0]
DY_DX = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
# dy/dλ = q − x/λ inside, 1 above, 0 below:
#   below: 0 | 0 − 0.1 | 0.25 − 0.15 | 0.25 − 0.37 | 0.75 − 0.65 | 1 − 1.05 | above: 1
DY_DLAM = [0.0, -0.1, 0.1, -0.12, 0.1, -0.05, 1.0]


def test_qcfs_hand_values():
    m = QCFS(levels=4, lambda_init=2.0)
    y = m(torch.tensor(X))
    assert y.tolist() == Y  # exact: every value is a multiple of λ/L = 0.5
    assert qcfs(torch.tensor(X), torch.tensor(2.0), 4).tolist() == Y


def test_qcfs_hand_gradients_per_element():
    m = QCFS(levels=4, lambda_init=2.0)
    x = torch.tensor(X, requires_grad=True)
    y = m(x)
    for i in range(len(X)):
        gx, glam = torch.autograd.grad(y[i], [x, m.lam], retain_graph=True)
        expect_gx = torch.zeros(len(X))
        expect_gx[i] = DY_DX[i]
        assert torch.equal(gx, expect_gx), (i, gx)
        # float32 rounding of x/λ only: 1e-6 absolute
        assert glam.item() == pytest.approx(DY_DLAM[i], abs=1e-6), (i, glam.item())


def test_qcfs_hand_gradients_summed():
    m = QCFS(levels=4, lambda_init=2.0)
    x = torch.tensor(X, requires_grad=True)
    m(x).sum().backward()
    assert x.grad.tolist() == DY_DX
    assert m.lam.grad.item() == pytest.approx(sum(DY_DLAM), abs=1e-6)  # 0.93


@pytest.mark.parametrize("levels,lam", [(4, 8.0), (2, 1.5), (8, 0.7), (1, 3.0)])
def test_qcfs_module_equals_reference(levels, lam):
    g = torch.Generator().manual_seed(levels)
    x = torch.randn(4096, generator=g) * lam
    y = QCFS(levels, lam)(x)
    ref = qcfs(x, torch.tensor(lam), levels)
    # Bit-identical except where x·L/λ + 1/2 sits within float rounding of an integer (the module
    # computes x·(L/λ), the reference (x·L)/λ); none such among these draws.
    assert torch.equal(y, ref)
    # values on the grid {0, λ/L, …, λ}
    k = y / (lam / levels)
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= 0 and k.max() <= levels


def naive_ste_qcfs(x: torch.Tensor, lam: torch.Tensor, levels: int) -> torch.Tensor:
    """QCFS with a straight-through floor built from autograd primitives (torch.clamp's backward
    passes the gradient on the closed interval [min, max])."""
    r = x / lam
    # value exactly floor(·)/L (r − r.detach() is 0), gradient that of x/λ: a straight-through floor
    s = (torch.floor(x * levels / lam + 0.5) / levels).detach() + (r - r.detach())
    return lam * torch.clamp(s, 0.0, 1.0)


@pytest.mark.parametrize("levels,lam", [(4, 8.0), (4, 2.0), (3, 0.9)])
def test_qcfs_gradients_match_naive_ste(levels, lam):
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(2000, generator=g) * lam).requires_grad_()
    w = torch.randn(2000, generator=g)  # random upstream gradient
    m = QCFS(levels, lam)
    (m(x) * w).sum().backward()

    x2 = x.detach().clone().requires_grad_()
    lam2 = torch.tensor(lam, requires_grad=True)
    y2 = naive_ste_qcfs(x2, lam2, levels)
    (y2 * w).sum().backward()

    assert torch.equal(m(x.detach()), y2.detach())
    # masks must agree element for element; values up to λ·(w/λ) rounding: 1e-6 relative
    assert torch.equal(x.grad != 0, x2.grad != 0)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-6, atol=0)
    # λ gradient sums 2000 terms in a different order: 1e-4 relative
    torch.testing.assert_close(m.lam.grad, lam2.grad, rtol=1e-4, atol=1e-4)
    # sanity: the test sees both clipped and unclipped elements, so it can fail either way
    assert 0 < int((x.grad == 0).sum()) < x.numel()


def test_qcfs_rejects_bad_levels():
    with pytest.raises(ValueError):
        QCFS(levels=0)
