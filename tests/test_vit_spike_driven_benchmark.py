"""benchmarks/vit_spike_driven.py: the point it reports per variant and its table, from a frontier
dict of the form ``frontier.json`` holds (the runs themselves take tens of minutes)."""
from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vit_spike_driven as bench


def _point(steps, top1, e_std, **kw):
    base = {"spike_levels": 1, "t": steps, "extra_t": 0, "steps": steps, "top1": top1, "e_snn_mj": e_std,
            "e_ann_mj": 0.02, "non_spike_share": 0.1, "e_snn_memory_mj": 0.01, "e_qnn_mj": 0.002,
            "qnn_snn_ratio": 0.2, "spikes_per_synapse": 1.5, "break_even_rate": None}
    return base | kw


def test_the_reported_point_is_the_cheapest_within_half_a_point_of_the_qann():
    fr = {"ann": {"top1": 88.0}, "energy_images": 512, "seconds": 10.0, "train_seconds": 100.0,
          "points": [_point(1, 80.0, 0.001), _point(4, 87.6, 0.004), _point(8, 88.1, 0.008),
                     _point(2, 87.5, 0.003, break_even_rate=0.02, qnn_snn_ratio=2.0)]}
    best = bench.best_point(fr)
    assert best["steps"] == 2  # 87.5 is within 0.5 of 88.0 and the cheapest such point
    md = bench.markdown({"spike_driven": fr}, Namespace(test_subset=2000, energy_batches=8))
    row = next(line for line in md.splitlines() if line.startswith("| `spike_driven`"))
    assert "T = 2 (t = 2 + 0), m = 1" in row and "0.15×" in row and "0.02" in row  # 0.003 / 0.02 of the fp32 ANN
    assert "wins against its equal-bit QNN" in md and "512 images" in md
    assert "at ≤ 0.3× the fp32 ANN's energy (standard model): `spike_driven` (0.15× at T = 2, m = 1" in md
    fr["points"] = [_point(1, 80.0, 0.001)]
    md = bench.markdown({"x": fr}, Namespace(test_subset=2000, energy_batches=8))
    assert bench.best_point(fr) is None and "not within 0.5" in md and "No variant has a point" in md
