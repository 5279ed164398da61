"""Your own model through ann2snn: quantize → fine-tune → convert → verify → accuracy per step,
table, energy.

    python examples/own_model.py              # a hand-written CNN and torchvision's resnet18, on digits
    python examples/own_model.py --quick      # fewer steps (what the test suite runs)

The workflow of the field (QCFS, Bu et al., ICLR 2022): start from a ReLU network (here trained
for a few steps first, standing in for your pretrained model), give every activation call site its
own QCFS quantizer with λ calibrated from activation percentiles, fine-tune with your own training
loop, then convert.  `ann2snn.verify` checks that the SNN settles on the quantized ANN.
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.app.distributed import build_loaders


class SmallCNN(nn.Module):
    """A model of your own: a ReLU module used at two sites, a functional relu, a residual add."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = y + self.relu(self.bn2(self.conv2(y)))  # the same ReLU module, a second call site
        y = F.relu(self.pool(y))
        return self.fc(y.mean((2, 3)))


def fit(model: nn.Module, loader, steps: int, lr: float) -> None:
    """Your own training loop (any loop works: QCFS trains like a ReLU network)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                break
    model.eval()


def run(name: str, relu_model: nn.Module, train_loader, test_loader, steps: int, t: int) -> dict:
    fit(relu_model, train_loader, steps, 1e-2)  # stands in for your pretrained ReLU model
    ann = ann2snn.quantize(relu_model, levels=4, calibrate=train_loader, calibration_batches=2)
    fit(ann, train_loader, steps, 1e-3)  # QCFS fine-tuning
    snn = ann2snn.convert(ann, "exact")
    x, _ = next(iter(test_loader))
    check = ann2snn.verify(ann, snn, x)
    sim = ann2snn.Simulator(snn)
    res = ann2snn.evaluate(sim, test_loader, t=t, ann=ann)
    table = ann2snn.evaluate_table(sim, test_loader, rows=[1, 2, t], extra_t=2)
    energy = ann2snn.measure_energy(ann, sim, test_loader, t=t)
    print(f"{name}: ANN top-1 {res.ann.top1:.2f}%; verify max |SNN - ANN| {check.max_abs_diff:.2g} "
          f"({'OK' if check.ok else 'FAILED'}, settled after {check.settle_steps} steps)")
    print("  k-step runs, top-1 %:", ", ".join(f"k={k}: {a:.2f}" for k, a in zip(res.k_step.k, res.k_step.top1)))
    print("  table rows t = 1, 2, %d at extra_t 0..2:" % t,
          {k: [round(a, 2) for a in row.top1] for k, row in table.items()})
    tot = energy.totals
    print(f"  energy per image: ANN {tot.e_ann_mj * 1e3:.3f} µJ, SNN {tot.e_snn_mj * 1e3:.3f} µJ "
          f"at t = {t}")
    return {"verify": check, "evaluate": res, "table": table, "energy": energy}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer training steps and one model (for tests)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    cfg = ann2snn.load_config("configs/digits.yml", {"bs": 64, "test_subset": 200 if args.quick else None})
    train_loader, test_loader, info = build_loaders(cfg)
    steps = 30 if args.quick else 200
    results = {"SmallCNN": run("SmallCNN", SmallCNN(info.num_classes), train_loader, test_loader, steps, 4)}
    if not args.quick:
        tv = ann2snn.create_model("torchvision:resnet18", in_channels=info.in_channels, img_size=info.img_size,
                                  num_classes=info.num_classes)
        results["resnet18"] = run("torchvision resnet18", tv, train_loader, test_loader, steps, 4)
    return 0 if all(r["verify"].ok for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
