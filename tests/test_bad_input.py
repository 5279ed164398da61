"""Bad input gets a one-paragraph error that names the problem and the fix, exit status 2, no
traceback, and no half-made run directory that a later ``convert`` would pick up.

The named cases of the issue are tested one by one; then a hypothesis test feeds 500 generated
config files and argument lists to the CLI (in-process) and asserts that every one either runs
or fails that way.  Downloads are switched off (as on an offline machine), so a missing dataset is
always a DataError and never a 170 MB download.
"""
from __future__ import annotations

import itertools
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ann2snn import cli, data
from ann2snn.config import FIELD_NAMES, Config
from ann2snn.convert import PRESETS
from ann2snn.data import DataError
from ann2snn.models import list_models

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yml")
TINY = {"data": "digits", "dim": 16, "num_heads": 2, "depth": 1, "mlp_ratio": 1.0, "bs": 16, "epochs": 1,
        "train_subset": 32, "test_subset": 16, "t": 2, "l": 2, "device": "cpu", "use_amp": False}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No downloads, and no Fashion-MNIST from the system folder: missing data stays missing."""
    def no_download(fn, root, not_found):
        raise DataError(f"{not_found} Downloading it into {str(root)!r} failed (offline test).")

    monkeypatch.setattr(data, "_download", no_download)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path_factory.getbasetemp() / "no-fmnist"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    _, err = capsys.readouterr()
    return rc, err


def assert_user_error(rc: int, err: str, command: str, *words: str) -> str:
    """Exit 2, no traceback, exactly one error paragraph (one line) naming the problem."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"ann2snn {command}: error:")]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def assert_no_partial_run(out_root: Path) -> None:
    """Nothing a later `convert` could pick up: every run folder left holds a checkpoint, and
    LATEST (if any) names a run with a best_model.pt."""
    if not out_root.exists():
        return
    for cfg_file in out_root.rglob("config.yaml"):
        assert list(cfg_file.parent.glob("*.pt")), f"partial run left behind: {cfg_file.parent}"
    latest = out_root / "LATEST"
    if latest.exists():
        assert (Path(latest.read_text().strip()) / "best_model.pt").is_file()


def write_yaml(path: Path, values: dict) -> str:
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A valid tiny checkpoint and broken relatives of it."""
    base = tmp_path_factory.mktemp("ckpts")
    cfg = write_yaml(base / "tiny.yml", TINY)
    torch.set_num_threads(1)
    assert cli.main(["train", "-c", cfg, "--out", str(base / "run"), "--out_root", str(base)]) == 0
    good = base / "run" / "best_model.pt"
    blob = good.read_bytes()
    (base / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    torch.save({"weights": torch.zeros(3)}, base / "foreign.pt")
    torch.save(torch.nn.Linear(2, 2), base / "pickled_module.pt")  # needs unpickling: refused
    (base / "garbage.pt").write_bytes(os.urandom(256))
    return {"good": good, "truncated": base / "truncated.pt", "foreign": base / "foreign.pt",
            "module": base / "pickled_module.pt", "garbage": base / "garbage.pt", "tiny_cfg": Path(cfg)}


# ----------------------------------------------------------------------------- named cases
@pytest.mark.parametrize("extra,words", [
    (["--epoch", "3"], ["Unknown config key 'epoch'", "Did you mean epochs"]),
    (["--t", "-1"], ["t (time steps) must be >= 1", "--t 8"]),
    (["--l", "0"], ["l (QCFS levels) must be >= 1"]),
    (["--dim", "64", "--num_heads", "5"], ["divisible by num_heads", "Pick num_heads among"]),
    (["--bs", "abc"], ["bs must be a int", "'abc'"]),
    (["--lr", "nan"], ["lr must be a finite number"]),
    (["--seed", "-3"], ["seed"]),
    (["--data", "mnist"], ["Unknown dataset 'mnist'", "--data NAME"]),
    (["--data", "cifar10"], ["cifar10 not found", "--data_dir"]),
    (["--data", "fashion_mnist"], ["Fashion-MNIST not found", "--data_dir"]),
    (["--device", "tpu"], ["device must be auto, cpu, cuda"]),
    (["--epochs"], ["--epochs needs a value"]),
])
def test_bad_train_arguments(capsys, tmp_path, extra, words):
    rc, err = run_cli(capsys, ["train", "-c", DIGITS, "--out_root", tmp_path, "--data_dir", tmp_path / "d",
                               *extra])
    assert_user_error(rc, err, "train", *words)
    assert_no_partial_run(tmp_path)
    assert not (tmp_path / "digits").exists()


def test_unknown_key_in_the_config_file(capsys, tmp_path):
    cfg = write_yaml(tmp_path / "c.yml", {**TINY, "num_head": 2})
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "Unknown config key 'num_head'", "Did you mean num_heads")


@pytest.mark.parametrize("text,words", [("dim: [1, 2\n", ["not valid YAML"]), ("- 1\n- 2\n", ["mapping"]),
                                        ("dim: 64\nnum_heads: 7\n", ["divisible by num_heads"])])
def test_malformed_config_files(capsys, tmp_path, text, words):
    (tmp_path / "c.yml").write_text(text)
    rc, err = run_cli(capsys, ["train", "-c", tmp_path / "c.yml", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", *words)


def test_missing_config_file(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", "-c", tmp_path / "nope.yml"])
    assert_user_error(rc, err, "train", "does not exist", "-c configs/digits.yml")


@pytest.mark.parametrize("kind,words", [("truncated", ["cannot be read", "truncated"]),
                                        ("garbage", ["cannot be read"]),
                                        ("module", ["cannot be read"]),
                                        ("foreign", ["not an ann2snn checkpoint"])])
@pytest.mark.parametrize("command", ["convert", "table"])
def test_unusable_checkpoints(capsys, checkpoints, tmp_path, kind, words, command):
    rc, err = run_cli(capsys, [command, "--checkpoint", checkpoints[kind], "--out", tmp_path / "o"])
    assert_user_error(rc, err, command, *words)
    assert not (tmp_path / "o").exists()


def test_checkpoint_from_a_different_model_config(capsys, checkpoints, tmp_path):
    rc, err = run_cli(capsys, ["convert", "-c", checkpoints["tiny_cfg"], "--dim", "32", "--checkpoint",
                               checkpoints["good"], "--out", tmp_path / "o"])
    assert_user_error(rc, err, "convert", "different model config", "dim: checkpoint 16 vs config 32")


def test_resume_of_a_missing_run(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", "-c", DIGITS, "--out", tmp_path / "never", "--resume"])
    assert_user_error(rc, err, "train", "Nothing to resume", "without --resume")
    assert not (tmp_path / "never").exists()


def test_resume_from_a_truncated_last_checkpoint(capsys, checkpoints, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(checkpoints["truncated"].read_bytes())
    rc, err = run_cli(capsys, ["train", "-c", checkpoints["tiny_cfg"], "--out", run, "--resume"])
    assert_user_error(rc, err, "train", "cannot be read")


def test_nan_loss_leaves_no_run_behind(capsys, checkpoints, tmp_path):
    """The loss of the first steps is NaN with lr 1e30 (AdamW's first step has size ~lr)."""
    rc, err = run_cli(capsys, ["train", "-c", checkpoints["tiny_cfg"], "--lr", "1e30", "--epochs", "2",
                               "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "loss became nan", "--lr 1e-3")
    assert_no_partial_run(tmp_path)
    assert not (tmp_path / "run").exists() and not (tmp_path / "LATEST").exists()
    rc, err = run_cli(capsys, ["convert", "--out_root", tmp_path])  # nothing for convert to pick up
    assert_user_error(rc, err, "convert", "No trained run found")


def test_console_script_exit_status_and_no_traceback(checkpoints, tmp_path):
    """The same through a real process: status 2, one error paragraph, no traceback."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1"}
    res = subprocess.run([sys.executable, "-m", "ann2snn", "train", "-c", str(checkpoints["tiny_cfg"]),
                          "--lr", "1e30", "--out_root", str(tmp_path)], env=env, text=True,
                         capture_output=True, timeout=120, cwd=tmp_path)
    assert_user_error(res.returncode, res.stderr, "train", "loss became nan")
    assert_no_partial_run(tmp_path)


# ----------------------------------------------------------------------------- fuzz
DIGITLESS = st.text(alphabet=string.ascii_letters + " -_/:.,!?@#$%^&*()[]{}<>~\\'\"é∞\t", max_size=10)
# invalid or out-of-range values: never a valid large number (which could mean a long run)
JUNK = st.one_of(DIGITLESS, st.integers(-10**12, -1), st.floats(max_value=-1e-9),
                 st.sampled_from([float("nan"), float("inf"), float("-inf"), 0.5, 2.5, 1e-300]),
                 st.booleans(), st.none(), st.lists(st.integers(-3, 3), max_size=2),
                 st.dictionaries(st.sampled_from("ab"), st.integers(0, 2), max_size=1),
                 st.sampled_from(["", "null", "~", "yes", "1e", "0x1", "nan", "inf", "-inf", "1.5", "-0"]))
# cheap valid values of the keys that decide how much work a run is
SMALL = {
    "l": st.integers(1, 4), "t": st.integers(1, 3), "extra_t": st.integers(0, 2),
    "bs": st.sampled_from([8, 16]), "eval_bs": st.sampled_from([None, 8, 16]), "epochs": st.integers(0, 1),
    "dim": st.sampled_from([8, 16, 24]), "num_heads": st.sampled_from([1, 2, 3, 4]), "depth": st.just(1),
    "mlp_ratio": st.sampled_from([0.5, 1.0, 2.0]), "train_subset": st.sampled_from([8, 16]),
    "test_subset": st.sampled_from([8, 16]), "workers": st.just(0), "warmup_epochs": st.integers(0, 1),
    "lr": st.floats(1e-4, 1e-1), "wd": st.floats(0, 1e-2), "seed": st.integers(0, 2**32 - 1),
    "lambda_init": st.floats(0.5, 8.0), "label_smoothing": st.floats(0, 0.3), "mixup": st.floats(0, 0.5),
    "data": st.sampled_from(["digits", "Digits", "fashion_mnist", "cifar10", "cifar100", "mnist"]),
    "model": st.sampled_from(list_models() + ["vit", ""]), "preset": st.sampled_from(sorted(PRESETS)),
    "attn": st.sampled_from(["softmax", "softmax_seed", "ssa", "linear"]), "id": DIGITLESS,
    "action": st.sampled_from(["train", "test", "eval"]), "mode": st.sampled_from(["ann", "snn", "both"]),
    "device": st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "tpu"]),
}
# keys whose valid values cost nothing extra (any value may be generated)
FREE = {"cutout", "patch_size", "ssa_form", "seed", "lr", "wd", "lambda_init", "id"}
FORCED = {"out_root", "data_dir", "model_path"}  # set by the harness (a temp folder, a checkpoint)


def _value(key: str, clean: bool = False):
    default = getattr(Config(), key)
    valid = SMALL.get(key)
    if valid is None:
        valid = st.booleans() if isinstance(default, bool) else st.just(default)
    if clean:
        return valid
    bad = st.one_of(JUNK, st.integers(), st.floats(), st.text(max_size=6)) if key in FREE else JUNK
    return st.one_of(valid, valid, valid, bad)


KEYS = [k for k in FIELD_NAMES if k not in FORCED]
TYPOS = st.sampled_from(KEYS).flatmap(lambda k: st.sampled_from([k[:-1], k + "s", k.upper(), k.replace("_", "")]))
KNOWN = st.sampled_from(KEYS)
KEY = st.one_of(KNOWN, KNOWN, KNOWN, KNOWN, KNOWN, TYPOS, st.text(string.ascii_lowercase + "_-", min_size=1, max_size=8))


@st.composite
def cli_case(draw):
    """(command, config kind, config values, junk file text, overrides, checkpoint, rows, extras).
    A quarter of the cases are "clean" (known keys, valid values: they mostly run); the rest mix in
    unknown keys, typos, junk values, stray tokens, broken files."""
    clean = draw(st.integers(0, 3)) == 0
    command = draw(st.sampled_from(["train", "train", "convert", "table", "run"]))
    config = "yaml" if clean else draw(st.sampled_from(["yaml"] * 6 + ["junk", "missing", "none"]))
    values = dict(TINY)
    for key in draw(st.lists(KNOWN if clean else KEY, max_size=2)):  # file mutations
        if key in KEYS:
            values[key] = draw(_value(key, clean))
        elif draw(st.booleans()):  # drop a key whose default is cheap (not epochs: 300)
            values.pop(draw(st.sampled_from(["t", "l", "use_amp", "device", "data"])), None)
        else:
            values[key] = draw(_value("lr"))
    args: list[str] = []
    for key in draw(st.lists(KNOWN if clean else KEY, max_size=2)):  # command-line overrides
        value = draw(_value(key, clean)) if key in KEYS else draw(st.integers(0, 3))
        style = draw(st.sampled_from(["space", "eq"] if clean else ["space", "space", "eq", "eq", "bare"]))
        flag = "--" + (key.replace("_", "-") if draw(st.booleans()) else key)
        args += {"space": [flag, str(value)], "eq": [f"{flag}={value}"], "bare": [flag]}[style]
    if not clean and draw(st.integers(0, 9)) == 0:
        args.append(draw(st.sampled_from(["-x", "stray", "--", "-", "--=1"])))
    if command == "train" and not clean and draw(st.integers(0, 4)) == 0:
        args.append("--resume")
    if clean:
        ckpt, rows, extras = "good", draw(st.sampled_from(["1-3", "2", "1,3", "2-3"])), draw(st.sampled_from(["0-2", "0", "1"]))
    else:
        ckpt = draw(st.sampled_from(["good"] * 4 + ["truncated", "foreign", "module", "garbage", "missing", None]))
        rows = draw(st.one_of(st.sampled_from(["1-3", "2", "1,3", "2-3"]),
                              st.sampled_from(["3-1", "0", "-2", "1-x", "", "1--2"]), DIGITLESS))
        extras = draw(st.sampled_from(["0-2", "0", "1", "0-1", "-1", "2-0", "x"]))
    return command, config, values, draw(st.text(max_size=30)), args, ckpt, rows, extras


_counter = itertools.count()


@pytest.fixture
def fast_plots(monkeypatch):
    """Plots are drawn but not rasterized to PNG (1-2 s per convert on a loaded 2-core box)."""
    from ann2snn import plots

    monkeypatch.setattr(plots, "_save", lambda fig, path: Path(path))


@settings(max_examples=500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=cli_case())
def test_fuzzed_configs_and_arguments_run_or_fail_cleanly(case, capsys, checkpoints, tmp_path_factory,
                                                          fast_plots):
    command, config, values, junk_text, args, ckpt, rows, extras = case
    work = tmp_path_factory.getbasetemp() / "fuzz" / str(next(_counter))
    work.mkdir(parents=True)
    argv: list[str] = [command]
    if config == "yaml":
        argv += ["-c", write_yaml(work / "c.yml", values)]
    elif config == "junk":
        (work / "c.yml").write_text(junk_text)
        argv += ["-c", str(work / "c.yml")]
    elif config == "missing":
        argv += ["-c", str(work / "missing.yml")]
    if command != "train" and ckpt is not None:
        argv += ["--checkpoint", str(checkpoints[ckpt]) if ckpt != "missing" else str(work / "none.pt")]
    if command == "table":
        argv += ["--t", rows, "--extra-t", extras]
    if command == "run":
        argv += ["--model_path", str(checkpoints.get(ckpt or "missing", work / "none.pt"))]
    argv += ["--out", str(work / "out"), *args, "--out_root", str(work / "runs"), "--data_dir", str(work / "data")]
    rc, err = run_cli(capsys, argv)
    assert "Traceback" not in err, (argv, err)
    event(f"{command}: {'ran' if rc == 0 else 'user error'}")  # pytest --hypothesis-show-statistics
    if rc == 0:
        return
    assert rc == 2, (argv, err)
    lines = [ln for ln in err.splitlines() if f": error: " in ln and ln.startswith("ann2snn")]
    assert len(lines) == 1 and len(lines[0]) > len(f"ann2snn {command}: error: ") + 10, (argv, err)
    assert_no_partial_run(work / "runs")
    assert_no_partial_run(work / "out")
