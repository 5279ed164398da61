"""The four PNG plots are written from results (dicts and typed results), are valid PNGs,
non-empty, and have the size that ``figure_size`` × ``DPI`` promises (read from the PNG header)."""
from __future__ import annotations

import struct
from dataclasses import fields
from pathlib import Path

import pytest

from ann2snn.app import plots
from ann2snn.energy import CONSTANTS, EnergyResult, EnergyRow, EnergyTotals
from ann2snn.results import Accuracy, Table, TableRow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def expected_px(kind: str, n: int = 0) -> tuple[int, int]:
    w, h = plots.figure_size(kind, n)
    return round(w * plots.DPI), round(h * plots.DPI)


def convert_result(t=4, extra_t=2):
    return {"ann": {"top1": 91.0},
            "snn": {"t": t, "extra_t": extra_t, "preset": "exact", "k_step_is_prefix": False,
                    "within_run": {"steps": list(range(1, 7)), "top1": [20.0, 60.0, 85.0, 90.0, 90.5, 90.5]},
                    "k_step": {"k": [1, 2, 3, 4], "total_steps": [3, 4, 5, 6], "top1": [70.0, 85.0, 90.0, 90.5]}},
            "effective_latency": {"steps": 5, "settled": True, "observed_steps": 6, "fraction": 0.999,
                                  "unsettled_fraction": 0.0}}


def energy_result(n_layers=3) -> EnergyResult:
    rows = []
    for i in range(n_layers):
        rows.append(EnergyRow(name=f"layer{i}", type="Linear", kind="synapse", op="MAC" if i == 0 else "AC",
                              input="image" if i == 0 else "spikes", rate=0.2, flops=1000 * (i + 1),
                              sops=500.0 * i, macs=1000.0 if i == 0 else 0.0,
                              e_ann_mj=4.6e-9 * 1000 * (i + 1), e_snn_mj=4.6e-6 if i == 0 else 0.9e-9 * 500 * i))
        rows.append(EnergyRow(name=f"act{i}", type="ScaledNeuron", kind="neuron", rate=0.1 * (i + 1),
                              neg_rate=0.01 * i))
    zeros = {f.name: 0 for f in fields(EnergyTotals)}
    totals = EnergyTotals(**{**zeros, "t": 4, "extra_t": 0, "steps": 4, "mean_rate": 0.2,
                             "constants": CONSTANTS["fp32"], "e_ann_mj": sum(r.e_ann_mj for r in rows),
                             "e_snn_mj": sum(r.e_snn_mj for r in rows)})
    return EnergyResult(rows, totals, effective_latency={"steps": None, "settled": False, "observed_steps": 4,
                                                         "fraction": 0.999, "unsettled_fraction": 0.01})


def table_result():
    # rows t = 1, 2, 4 with extra_t 0..2
    return Table({t: TableRow(cols=[t, t + 1, t + 2], bit_steps=[1.585 * c for c in (t, t + 1, t + 2)],
                              top1=[50.0 + t, 55.0 + t, 60.0 + t], top5=[90.0] * 3, loss=[1.0] * 3)
                  for t in (1, 2, 4)})


def test_accuracy_plot(tmp_path):
    path = plots.plot_accuracy(convert_result(), tmp_path / "a" / "accuracy.png")
    assert path.stat().st_size > 5000
    assert png_size(path) == expected_px("accuracy")


def test_heatmap_plot(tmp_path):
    path = plots.plot_table_heatmap(Accuracy(top1=91.0, top5=99.0, loss=0.3), table_result(), [0, 1, 2], tmp_path / "heat.png")
    assert path.stat().st_size > 5000
    assert png_size(path) == expected_px("heatmap")


@pytest.mark.parametrize("n_layers", [3, 30])
def test_firing_rate_and_energy_plots(tmp_path, n_layers):
    res = energy_result(n_layers)
    rates, energy = plots.write_energy_plots(res, tmp_path)
    assert rates.name == plots.NAMES["rates"] and energy.name == plots.NAMES["energy"]
    for path, kind in ((rates, "rates"), (energy, "energy")):
        assert path.stat().st_size > 5000
        assert png_size(path) == expected_px(kind, n_layers)  # one bar (group) per layer


def test_convert_plots_without_energy(tmp_path):
    paths = plots.write_convert_plots(convert_result(), None, tmp_path)
    assert [p.name for p in paths] == [plots.NAMES["accuracy"]]
    paths = plots.write_convert_plots(convert_result(), energy_result(), tmp_path)
    assert sorted(p.name for p in paths) == sorted([plots.NAMES[k] for k in ("accuracy", "rates", "energy")])
