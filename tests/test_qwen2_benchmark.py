"""benchmarks/qwen2_vs_spikingjelly.py: its step counting, and a tiny run of the whole comparison
(both converters on one small Qwen2; the real run takes minutes)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import qwen2_vs_spikingjelly as bench  # noqa: E402


def test_steps_needed_is_where_the_criterion_starts_to_hold_for_good():
    curve = [(t, {"a": ok}) for t, ok in [(1, False), (2, True), (3, False), (4, True), (8, True)]]
    assert bench.steps_needed(curve, "a") == 4
    assert bench.steps_needed(curve[:3], "a") is None
    assert bench._steps(curve[:3], "a") == "> 3"


@pytest.mark.slow
def test_a_tiny_comparison_runs_and_ours_settles_on_its_qann():
    args = bench.parse(["--train-steps", "3", "--sj-steps", "1,4", "--levels", "2", "--placements", "synapses",
                        "--t-max", "24", "--dim", "16", "--depth", "1", "--seq", "8", "--batch", "2", "--calib", "8"])
    res = bench.run(args)
    o = res["ours"][0]
    assert o["verify_ok"]
    assert bench.steps_needed(o["extra"], "a") is not None  # t = L plus zero-input steps reaches the QANN
    assert [t for t, _ in res["spikingjelly"]] == [1, 4]
    md = bench.markdown(res, args)
    assert md.count("| ann2snn, L = 2, `synapses`") == 4 and "| SpikingJelly `Qwen2SNNRecipe`" in md
