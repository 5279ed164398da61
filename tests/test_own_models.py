"""The field's workflow for a model of one's own, through the CLI and the example file:
ReLU-pretrained torchvision model → calibrate λ → QCFS fine-tune → convert (verified exact)."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ann2snn.app.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yml")
SMALL = ["--train_subset", "192", "--test_subset", "64", "--epochs", "1", "--bs", "64"]


def run(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_relu_pretrained_torchvision_model_calibrate_finetune_convert(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="ann2snn")
    relu = tmp_path / "relu"
    rc, _, err = run(capsys, ["train", "-c", DIGITS, "--model", "torchvision:resnet18", "--quantize", "false",
                              "--out", relu, "--out_root", tmp_path, *SMALL])
    assert rc == 0, err
    # the ReLU checkpoint has no QCFS site: converting it is refused, with the way out
    rc, _, err = run(capsys, ["convert", "--checkpoint", relu / "best_model.pt"])
    assert rc == 2 and "needs a QCFS-quantized ANN" in err and "Traceback" not in err
    qcfs = tmp_path / "qcfs"
    rc, _, err = run(capsys, ["train", "-c", DIGITS, "--model", "torchvision:resnet18", "--pretrained",
                              relu / "best_model.pt", "--calibrate_batches", "2", "--lr", "1e-3", "--out", qcfs,
                              "--out_root", tmp_path, *SMALL])
    assert rc == 0, err
    assert "calibrate: λ of 17 QCFS site(s)" in caplog.text  # resnet18: 17 activation call sites
    ckpt = torch.load(qcfs / "best_model.pt", weights_only=True)
    assert ckpt["config"]["model"] == "torchvision:resnet18" and "layer1.0.relu_2.lam" in ckpt["model"]
    # λ came from calibration, not from lambda_init (8.0)
    lams = [float(v) for k, v in ckpt["model"].items() if k.endswith(".lam")]
    assert len(lams) == 17 and len({round(v, 3) for v in lams}) > 10 and all(v > 0 and abs(v - 8.0) > 1e-3 for v in lams)
    rc, out, err = run(capsys, ["convert", "--checkpoint", qcfs / "best_model.pt", "--t", "4", "--verify",
                                "--json", tmp_path / "c.json"])
    assert rc == 0, err
    assert "verify (exact, first test batch, t = 4, float64)" in out and ": OK;" in out, out
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["verify"]["ok"] and res["verify"]["max_abs_diff"] <= 1e-4 * max(1.0, res["verify"]["scale"])


def test_pretrained_file_errors(tmp_path, capsys):
    rc, _, err = run(capsys, ["train", "-c", DIGITS, "--model", "torchvision:resnet18", "--pretrained",
                              tmp_path / "missing.pt", "--out", tmp_path / "r", *SMALL])
    assert rc == 2 and "do not exist" in err and "Traceback" not in err
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "other.pt")
    rc, _, err = run(capsys, ["train", "-c", DIGITS, "--model", "torchvision:resnet18", "--pretrained",
                              tmp_path / "other.pt", "--out", tmp_path / "r2", *SMALL])
    assert rc == 2 and "does not fit this model" in err
    rc, _, err = run(capsys, ["train", "-c", DIGITS, "--model", "torchvision:resnet19", "--out", tmp_path / "r3"])
    assert rc == 2 and "torchvision has no model 'resnet19'" in err and "torchvision:resnet18" in err


@pytest.mark.parametrize("name", ["resnet18", pytest.param("vgg11_bn", marks=pytest.mark.slow), "mobilenet_v2",
                                  "densenet121"])
def test_torchvision_family_adapts_to_small_one_channel_images(name):
    from ann2snn.models import create_model

    m = create_model(f"torchvision:{name}", in_channels=1, img_size=8, num_classes=10).eval()
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.slow
def test_the_example_runs_and_its_conversions_verify():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "examples/own_model.py", "--quick"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verify max |SNN - ANN|" in proc.stdout and "(OK," in proc.stdout and "k-step runs" in proc.stdout
