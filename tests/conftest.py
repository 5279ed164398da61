"""Shared test setup: one torch thread, hypothesis profile, small random QCFS models.

The test machine has 2 cores shared with other jobs; torch's default intra-op pool oversubscribes
them (measured: a 60-step simulation of a tiny transformer took 27 s with 2 threads under load and
0.3 s with 1), so every test runs single-threaded.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also inherited by subprocesses started by tests

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)

settings.register_profile("ann2snn", deadline=None, max_examples=60, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ann2snn")


def randomize_bn(model: nn.Module, gen: torch.Generator | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (in place)."""
    g = gen or torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                c = bn.num_features
                bn.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if bn.affine:
                    bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    bn.bias.copy_(torch.rand(c, generator=g) * 0.7 - 0.2)
    return model


def randomize_lambdas(model: nn.Module, low: float = 0.5, high: float = 2.0,
                      gen: torch.Generator | None = None) -> nn.Module:
    """Spread the QCFS thresholds λ of a model over [low, high] (in place)."""
    from ann2snn.quant import QCFS

    g = gen or torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, QCFS):
                m.lam.fill_(float(torch.rand((), generator=g)) * (high - low) + low)
    return model


def small_transformer(levels: int | None = 4, seed: int = 0, **kw) -> nn.Module:
    """The brief's small random transformer (dim 32, 2 heads, depth 1, 8×8×1 input), QCFS-quantized
    with ``levels`` unless None, random BN statistics and λ, in eval mode."""
    from ann2snn.quant import quantize
    from ann2snn.models import create_model

    torch.manual_seed(seed)
    args = dict(dim=32, num_heads=2, depth=1, in_channels=1, img_size=8, num_classes=10)
    args.update(kw)
    model = create_model("transformer", **args)
    if levels is not None:
        quantize(model, levels)
        randomize_lambdas(model, gen=torch.Generator().manual_seed(seed + 1))
    randomize_bn(model, torch.Generator().manual_seed(seed + 2))
    return model.eval()


@pytest.fixture
def qcfs_transformer() -> nn.Module:
    return small_transformer()
