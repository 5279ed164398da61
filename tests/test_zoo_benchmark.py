"""benchmarks/zoo.py: the one-model path (``--one``) on a torchvision and a timm model, the parent's
time limit, and the report's totals."""
from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import zoo

FIELDS = {"task", "zoo", "model", "family", "params", "input", "outcome", "sites", "active_sites",
          "max_abs_diff", "scale", "settle_steps", "times", "sj"}


def one(capsys, task: str) -> dict:
    assert zoo.main(["--one", task]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    rec = json.loads(lines[-1])
    assert rec.pop("final") is True
    return rec


@pytest.mark.parametrize("task", ["tv:resnet18", "timm:resnet10t"])
def test_one_model_converts_exactly(capsys, task):
    if task.startswith("timm"):
        pytest.importorskip("timm")
    rec = one(capsys, task)
    assert FIELDS <= rec.keys()
    assert rec["outcome"] == "exact", rec
    assert rec["input"] == 32 and rec["sites"] > 0 and rec["active_sites"] > 0
    assert rec["max_abs_diff"] <= 1e-4 * max(1.0, rec["scale"]) and rec["settle_steps"] >= 4
    assert {"build_s", "quantize_s", "calibrate_s", "convert_s", "verify_s"} <= rec["times"].keys()
    sj = rec["sj"]  # SpikingJelly converts these ReLU networks; whether it reproduces them is measured
    assert sj["outcome"] in ("reproduces", "differs") and sj["neurons"] > 0
    assert 0.0 <= sj["argmax_agree"] <= 1.0 and sj["rel_err"] >= 0.0 and sj["steps"] == zoo.SJ_STEPS


def test_a_model_over_the_time_limit_is_recorded_and_the_sweep_goes_on(tmp_path):
    args = Namespace(timeout=0.5, threads=1, classes=10, candidates=2, max_params=zoo.MAX_PARAMS,
                     sizes=[32], sj=False, calibrate=True)
    rec = zoo.run_child("tv:resnet18", args)
    assert rec["outcome"] == "timeout" and rec["task"] == "tv:resnet18" and "0.5 s" in rec["error"]


def test_totals_and_markdown():
    recs = [
        {"task": "tv:a", "zoo": "torchvision", "model": "a", "outcome": "exact", "input": 32, "sites": 3,
         "max_abs_diff": 0.0, "scale": 2.0, "settle_steps": 6, "times": {"convert_s": 1.5, "verify_s": 2.0},
         "sj": {"outcome": "differs", "argmax_agree": 1.0, "rel_err": 0.2}},
        {"task": "tv:b", "zoo": "torchvision", "model": "b", "outcome": "refused", "operator": "Tensor.abs",
         "reason": "not linear", "times": {"convert_s": 3.0}, "sj": {"outcome": "refused", "error": "ValueError: x"}},
        {"task": "tv:c", "zoo": "torchvision", "model": "c", "outcome": "too_big", "params": 6e8},
    ]
    t = zoo.totals(recs)["torchvision"]
    assert t["counts"]["exact"] == 1 and t["built"] == 2 and t["exact_pct"] == 50.0
    assert t["slowest_convert"]["model"] == "b" and t["slowest_verify"]["model"] == "a"
    assert t["refusals"] == {"Tensor.abs": ["b"]} and t["too_big"] == ["c"]
    assert t["sj"]["differs"] == 1 and t["sj"]["refused"] == 1
    args = Namespace(threads=1, timeout=600, classes=10, sizes=[32], calibrate=True, candidates=20,
                     max_params=zoo.MAX_PARAMS)
    md = zoo.markdown(recs, args, "python benchmarks/zoo.py --write")
    assert md.startswith("<!-- zoo:start -->") and md.rstrip().endswith("<!-- zoo:end -->")
    assert "over the parameter limit: c" in md and "`Tensor.abs`: 1 (b)" in md and "| 50 % |" in md
