"""benchmarks/language_model.py end to end on a tiny decoder (the real run takes tens of minutes)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import language_model as bench  # noqa: E402

from ann2snn.results import Table, TableRow  # noqa: E402


def test_fewest_steps_is_the_shortest_cell_within_half_a_percent():
    ref = 10.0
    table = Table()
    table.rows[1] = TableRow([1, 2], [1.6, 3.2], [0, 0], [0, 0], [math.log(12.0), math.log(10.04)])
    table.rows[2] = TableRow([2, 3], [3.2, 4.8], [0, 0], [0, 0], [math.log(10.06), math.log(10.0)])
    best = bench.fewest_steps(table, ref)
    assert (best["T"], best["t"], best["extra_t"]) == (2, 1, 1)  # 10.04 is within 0.5 % and T = 2 is the fewest
    assert bench.fewest_steps(table, 5.0) is None


@pytest.mark.slow
def test_the_benchmark_runs_and_writes_its_section(tmp_path, monkeypatch):
    cfg = yaml.safe_load(bench.CONFIG.read_text())
    cfg.update(dim=16, num_heads=2, depth=1, mlp_ratio=2, context=16, epochs=1, train_subset=64, l=2, bs=16,
               calibrate_batches=1, device="cpu", use_amp=False)
    tiny = tmp_path / "tiny.yml"
    tiny.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(bench, "CONFIG", tiny)
    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(bench, "write_marked", lambda name, md: results.write_text(md))
    assert bench.main(["--runs", str(tmp_path / "runs"), "--test-subset", "4", "--prompts", "2", "--new-tokens", "3",
                       "--settle", "6", "--write"]) == 0
    res = json.loads((tmp_path / "runs" / "language_model.json").read_text())
    assert res["verify"]["ok"]
    # after t = L input steps and L settle steps the binary SNN equals its QANN: within 0.5 %
    assert res["fewest_m1"] is not None and res["fewest_mL"] is not None
    assert len(res["generation"]["m1_tL"]["snn"]) == 2
    md = results.read_text()
    assert "language-model:start" in md and "Greedy generation" in md and "Energy per scored token" in md
