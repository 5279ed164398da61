"""The command line end to end on the embedded digits set (train → convert → table, in process),
user errors (exit status 2, one message, no traceback) and YAML typing."""
from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from ann2snn.app.cli import main
from ann2snn.app.config import FIELD_NAMES, load_config

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits.yml"
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-epoch digits run under its own out_root (~5 s on one core)."""
    root = tmp_path_factory.mktemp("cli")
    rc = main(["train", "-c", str(DIGITS), "--out", str(root / "run"), "--out_root", str(root),
               "--epochs", "3"])
    assert rc == 0
    return root


def run_main(capsys, argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_train_writes_run_and_latest(trained):
    run = trained / "run"
    for name in ("best_model.pt", "last.pt", "config.yaml", "log.csv"):
        assert (run / name).is_file(), name
    assert Path((trained / "LATEST").read_text().strip()) == run.resolve()
    with open(run / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert float(rows[-1]["test_top1"]) > 50  # digits learns fast; chance is 10%
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["epochs"] == 3 and saved["data"] == "digits" and saved["out_root"] == str(trained)


@pytest.mark.slow
def test_convert_json_schema(trained, capsys):
    out_json = trained / "x.json"
    rc, out, err = run_main(capsys, ["convert", "--t", 4, "--json", out_json, "--out_root", trained])
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    # the schema: "ann" and "snn" key for key; the top level may carry more (energy figures)
    assert {"ann", "snn", "checkpoint", "n", "effective_latency"} <= set(res)
    assert set(res["ann"]) == {"top1", "top5", "loss"}
    assert set(res["snn"]) == {"t", "extra_t", "preset", "spike_levels", "bits_per_step", "k_step", "k_step_is_prefix",
                               "within_run"}
    assert res["snn"]["spike_levels"] == 1 and res["snn"]["bits_per_step"] == pytest.approx(1.585, abs=1e-3)
    assert all(isinstance(res["ann"][k], float) for k in ("top1", "top5", "loss"))
    snn = res["snn"]
    assert (snn["t"], snn["extra_t"], snn["preset"]) == (4, 0, "exact")  # digits.yml: extra_t 0
    assert snn["within_run"]["steps"] == [1, 2, 3, 4] and snn["k_step"]["k"] == [1, 2, 3, 4]
    assert snn["k_step_is_prefix"] is False  # exact: thresholds t/L differ per k
    for part in (snn["within_run"], snn["k_step"]):
        for k in ("top1", "top5", "loss"):
            assert isinstance(part[k], list) and len(part[k]) == 4 and all(isinstance(v, float) for v in part[k])
    # the t-step run is both the last k-step run and the end of the within-run listing
    assert snn["k_step"]["top1"][-1] == snn["within_run"]["top1"][-1]
    assert snn["k_step"]["loss"][-1] == pytest.approx(snn["within_run"]["loss"][-1], rel=1e-12)
    assert res["n"] == 450  # the digits test split
    assert Path(res["checkpoint"]) == (trained / "run" / "best_model.pt").resolve()
    # t = L = 4 under exact: the SNN is the L-level ANN up to neurons that have not settled yet;
    # on this model that leaves it within 3 points (measured: within 1)
    assert abs(snn["k_step"]["top1"][-1] - res["ann"]["top1"]) <= 3.0
    lat = res["effective_latency"]
    assert lat["observed_steps"] == 4 and (lat["settled"] == (lat["steps"] is not None))
    # the copy in the run directory, named after the checkpoint, is the same result
    assert json.loads((trained / "run" / "eval-best_model-exact" / "convert_t4_e0.json").read_text()) == res
    assert "k-step runs" in out and "within the one 4-step run" in out


@pytest.mark.slow
def test_convert_extra_steps_lengthen_lists(trained, capsys):
    out_json = trained / "y.json"
    rc, out, err = run_main(capsys, ["convert", "--t", 2, "--extra_t", 2, "--preset", "seed",
                                     "--json", out_json, "--out_root", trained])
    assert rc == 0, err
    snn = json.loads(out_json.read_text())["snn"]
    assert (snn["t"], snn["extra_t"], snn["preset"]) == (2, 2, "per_step")  # the old name "seed" still works
    w = snn["within_run"]
    assert len(w["top1"]) == len(w["top5"]) == len(w["loss"]) == 4
    assert snn["k_step"]["total_steps"] == [3, 4] and snn["k_step_is_prefix"] is True
    # under seed a 1-step run is the first step of the 2-step run
    assert snn["k_step"]["top1_no_extra"][0] == w["top1"][0]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["exact", "rate"])
def test_convert_k_step_curve_is_the_table(trained, capsys, preset):
    """`convert --t 3 --extra-t 1`'s k-step runs are the table's cells (k, k) and (k, k + 1), and
    the within-run listing is row 3 (issue: convert must not contradict table)."""
    rc, _, err = run_main(capsys, ["table", "--t", "1-3", "--extra-t", "0-1", "--preset", preset,
                                   "--out", trained / f"tab-{preset}", "--out_root", trained])
    assert rc == 0, err
    rc, _, err = run_main(capsys, ["convert", "--t", 3, "--extra-t", 1, "--preset", preset,
                                   "--json", trained / f"c-{preset}.json", "--out_root", trained])
    assert rc == 0, err
    rows = json.loads((trained / f"tab-{preset}" / "table.json").read_text())["rows"]
    snn = json.loads((trained / f"c-{preset}.json").read_text())["snn"]
    ks = snn["k_step"]
    assert ks["top1_no_extra"] == [rows[str(k)]["top1"][0] for k in (1, 2, 3)]
    assert ks["top1"] == [rows[str(k)]["top1"][1] for k in (1, 2, 3)]
    assert ks["loss"] == pytest.approx([rows[str(k)]["loss"][1] for k in (1, 2, 3)], rel=1e-12)
    assert snn["within_run"]["top1"][2:] == rows["3"]["top1"]
    if preset == "rate":  # threshold 1: a k-step run is a prefix of the 3-step run
        assert snn["k_step_is_prefix"] and ks["top1_no_extra"] == snn["within_run"]["top1"][:3]


@pytest.mark.slow
def test_table_outputs(trained, capsys):
    out = trained / "tab"
    rc, stdout, err = run_main(capsys, ["table", "--t", "1-3", "--extra-t", "0-2", "--out", out,
                                        "--out_root", trained])
    assert rc == 0, err
    for name in ("table.md", "table.csv", "table.json"):
        assert (out / name).is_file(), name
    with open(out / "table.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["t", "extra_t", "steps", "spike_levels", "bit_steps", "top1", "top5", "loss"]
    assert [tuple(map(int, r[:3])) for r in rows[1:]] == [(t, e, t + e) for t in (1, 2, 3) for e in (0, 1, 2)]
    table = json.loads((out / "table.json").read_text())
    # the CSV is the JSON, cell by cell (rounded to 2 decimals)
    for r in rows[1:]:
        cell = table["rows"][r[0]]
        assert float(r[5]) == pytest.approx(cell["top1"][int(r[1])], abs=0.005)
        assert float(r[6]) == pytest.approx(cell["top5"][int(r[1])], abs=0.005)
        assert r[3] == "1" and float(r[4]) == pytest.approx(int(r[2]) * 1.585, abs=0.01)  # T × log2(3) bits
    assert sorted(table["rows"]) == ["1", "2", "3"] and table["extras"] == [0, 1, 2]
    assert table["rows"]["2"]["cols"] == [2, 3, 4]
    md = (out / "table.md").read_text()
    assert "| t \\ t+extra_t | 1 | 2 | 3 | 4 | 5 |" in md and md in stdout


def test_per_step_loss_is_the_cross_entropy_of_the_prefix_mean():
    """Issue 1b: after s steps of a t-step run the loss is CE(sum_s / min(s, t)), not CE(sum_s / t)."""
    from torch import nn

    from ann2snn.convert import SpikingNetwork
    from ann2snn.metrics import evaluate
    from ann2snn.neurons import Clock
    from ann2snn.presets import PRESETS
    from ann2snn.simulate import Simulator

    class Const(nn.Module):  # emits the same logits on drive steps, zeros on extra steps
        def forward(self, x):
            return x

    x = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    y = torch.tensor([0, 2])
    sim = Simulator(SpikingNetwork(Const(), Clock(), PRESETS["rate"], {}))
    res = evaluate(sim, [(x, y)], t=3, extra_t=2)
    ce = torch.nn.functional.cross_entropy
    # the running mean is x after every drive step and stays x on extra steps (sum 3x divided by 3)
    assert res.within_run.loss == pytest.approx([float(ce(x, y))] * 5, rel=1e-6)
    assert res.k_step.loss == pytest.approx([float(ce(x, y))] * 3, rel=1e-6)


def test_help_subprocess():
    p = subprocess.run([sys.executable, "-m", "ann2snn", "--help"], capture_output=True, text=True,
                       env=SUB_ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    for cmd in ("train", "convert", "table"):
        assert cmd in p.stdout


def test_help_loads_no_torch():
    """The command line's own modules load no torch: ``--help`` answers at once, and Ctrl-C is
    handled before the heavy imports (main installs its handler first)."""
    code = ("import sys\nfrom ann2snn.app import cli\ncli.build_parser()\n"
            "print(sorted(m for m in ('torch', 'numpy', 'spikingjelly') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=SUB_ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


# ------------------------------------------------------------------------ user errors
def assert_user_error(rc, err, *needles):
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("ann2snn ") and "error:" in err
    for needle in needles:
        assert needle in err, (needle, err)


def write_yaml(path: Path, **changes) -> Path:
    cfg = yaml.safe_load(DIGITS.read_text())
    cfg.update(changes)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_unknown_yaml_key_subprocess(tmp_path):
    bad = write_yaml(tmp_path / "bad.yml", epoch=3)  # typo of `epochs`
    p = subprocess.run([sys.executable, "-m", "ann2snn", "train", "-c", str(bad), "--out_root",
                        str(tmp_path)], capture_output=True, text=True, env=SUB_ENV, timeout=120)
    assert_user_error(p.returncode, p.stderr, "'epoch'", "Did you mean epochs", "Valid keys")
    assert not (tmp_path / "LATEST").exists()  # nothing ran


def test_unknown_override_key(tmp_path, capsys):
    rc, _, err = run_main(capsys, ["train", "-c", DIGITS, "--bogus", "1", "--out_root", tmp_path])
    assert_user_error(rc, err, "'bogus'", "Valid keys", "epochs")
    rc, _, err = run_main(capsys, ["train", "-c", DIGITS, "--num-head", "2", "--out_root", tmp_path])
    assert_user_error(rc, err, "Did you mean num_heads")


def test_wrong_type_override(tmp_path, capsys):
    rc, _, err = run_main(capsys, ["train", "-c", DIGITS, "--lr", "abc", "--out_root", tmp_path])
    assert_user_error(rc, err, "lr must be a float", "'abc'")
    rc, _, err = run_main(capsys, ["train", "-c", DIGITS, "--epochs", "2.5", "--out_root", tmp_path])
    assert_user_error(rc, err, "epochs must be an int")


def test_missing_data_no_network(tmp_path, capsys, monkeypatch):
    """CIFAR-10 absent from an empty --data_dir: the download is attempted (download=None) but the
    network is cut here, so the test never waits on it; the error says what is missing and how
    to get it."""
    def offline(*a, **k):
        raise urllib.error.URLError("network disabled by the test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(socket, "create_connection", offline)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_main(capsys, ["train", "-c", DIGITS, "--data", "cifar10", "--data_dir", empty,
                                   "--out", tmp_path / "run", "--out_root", tmp_path])
    assert_user_error(rc, err, "cifar10 not found", "data_batch_1", str(empty), "--data_dir",
                      "network disabled by the test")  # the download was tried, and cut
    assert not (tmp_path / "run" / "best_model.pt").exists()


@pytest.mark.slow
def test_checkpoint_from_another_config(trained, tmp_path, capsys):
    other = write_yaml(tmp_path / "dim32.yml", dim=32)
    rc, _, err = run_main(capsys, ["convert", "-c", other, "--checkpoint", trained / "run" / "best_model.pt"])
    assert_user_error(rc, err, "different model config", "dim: checkpoint 64 vs config 32")


@pytest.mark.slow
def test_truncated_checkpoint(trained, tmp_path, capsys):
    data = (trained / "run" / "best_model.pt").read_bytes()
    half = tmp_path / "half.pt"
    half.write_bytes(data[: len(data) // 2])
    rc, _, err = run_main(capsys, ["convert", "--checkpoint", half])
    assert_user_error(rc, err, str(half), "cannot be read", "truncated")


def test_non_checkpoint_files(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    rc, _, err = run_main(capsys, ["convert", "--checkpoint", text])
    assert_user_error(rc, err, str(text), "cannot be read")
    tensor = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(3)}, tensor)  # a torch file, but not ours
    rc, _, err = run_main(capsys, ["convert", "--checkpoint", tensor])
    assert_user_error(rc, err, "not an ann2snn checkpoint")
    rc, _, err = run_main(capsys, ["convert", "--checkpoint", tmp_path / "missing.pt"])
    assert_user_error(rc, err, "does not exist")


def test_no_run_yet(tmp_path, capsys):
    rc, _, err = run_main(capsys, ["convert", "--out_root", tmp_path])
    assert_user_error(rc, err, "No trained run found", "LATEST")


# ------------------------------------------------------------------------ YAML typing
def test_yaml_scientific_notation_is_float(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text("lr: 1e-2\nwd: 5e-4\nepochs: 1e1\n")  # YAML 1.1 reads these as strings
    cfg = load_config(p)
    assert cfg.lr == 0.01 and type(cfg.lr) is float
    assert cfg.wd == 5e-4 and cfg.epochs == 10 and type(cfg.epochs) is int


SEED_003_YAML = """\
action: train
mode: snn
l: 4
t: 8
extra_t: 0
bs: 64
lr: 1e-2
wd: 1e-4
epochs: 150
id: mymodel2
seed: 42
data: cifar10
dim: 384
num_heads: 12
patch_size: 4
mlp_ratio: 4
save: True
save_acc: True
model_path: ./mymodel1/best_model.pt
inherit: False
use_maxpool: True
use_amp: True
"""


def test_seed_003_config_loads(tmp_path):
    p = tmp_path / "cifar10.yml"
    p.write_text(SEED_003_YAML)
    keys = set(yaml.safe_load(SEED_003_YAML))
    assert len(keys) == 22 and keys <= set(FIELD_NAMES)
    cfg = load_config(p)
    assert (cfg.action, cfg.mode, cfg.l, cfg.t, cfg.extra_t, cfg.bs) == ("train", "snn", 4, 8, 0, 64)
    assert (cfg.lr, cfg.wd, cfg.epochs, cfg.id, cfg.seed, cfg.data) == (0.01, 1e-4, 150, "mymodel2", 42, "cifar10")
    assert (cfg.dim, cfg.num_heads, cfg.patch_size, cfg.mlp_ratio) == (384, 12, 4, 4.0)
    assert type(cfg.mlp_ratio) is float
    assert cfg.save is True and cfg.save_acc is True and cfg.inherit is False
    assert cfg.use_maxpool is True and cfg.use_amp is True
    assert cfg.model_path == "./mymodel1/best_model.pt"


@pytest.mark.slow
def test_run_action_test_evaluates_the_checkpoint_flag_over_model_path(trained, capsys, tmp_path):
    """`ann2snn run` with an original-style config: action test, mode ann/snn; --checkpoint wins."""
    ckpt = trained / "run" / "best_model.pt"
    cfg = yaml.safe_load(DIGITS.read_text())
    cfg.update(action="test", mode="ann", model_path=str(tmp_path / "missing.pt"), out_root=str(trained))
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(cfg))
    rc, out, err = run_main(capsys, ["run", "-c", path])
    assert rc == 2 and "missing.pt" in err and "Traceback" not in err  # model_path is used ...
    rc, out, err = run_main(capsys, ["run", "-c", path, "--checkpoint", ckpt])  # ... unless overridden
    assert rc == 0, err
    best = torch.load(ckpt, weights_only=True)["metrics"]["top1"]  # its test top-1 when saved
    assert f"ANN top-1 {best:.2f}%" in out
    cfg.update(mode="snn", model_path=str(ckpt), t=2)
    path.write_text(yaml.safe_dump(cfg))
    rc, out, err = run_main(capsys, ["run", "-c", path, "--json", tmp_path / "snn.json"])
    assert rc == 0, err
    snn = json.loads((tmp_path / "snn.json").read_text())["snn"]
    assert snn["t"] == 2 and len(snn["within_run"]["top1"]) == 2 + cfg["extra_t"]
