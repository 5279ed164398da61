"""Faults of the file system and of the files a run reads, and the safety of a run's data (issue 9,
sections 2 and 3): each ends in one line ``ann2snn <cmd>: error: …`` on stderr, exit status 2, no
traceback, and nothing lost.

Most cases run the CLI in process.  Where the fault needs the kernel -- a read-only or full file
system, a folder this user cannot write to, a pipe as the config file -- the test mounts a small
tmpfs or runs the CLI as user ``nobody`` in a subprocess, and is skipped where that is not
possible (not root, no mount).
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from ann2snn.app import checkpoint, commands, config, rundir
from ann2snn.app.config import FIELD_NAMES, MAX_STEPS, RESUME_SAFE_KEYS, Config, ConfigError

from helpers import (ROOT, TINY, assert_user_error, copy_run, fill, run_cli, snapshot,
                     tmpfs, write_yaml)

ANN2SNN = str(ROOT / ".venv" / "bin" / "ann2snn")
LOG_HEADER = "epoch,lr,train_loss,train_top1,test_loss,test_top1,test_top5,epoch_s"
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1", "PYTHONWARNINGS": "ignore"}
pytestmark = pytest.mark.usefixtures("offline")


def run_without_dac_override(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a subprocess for which permission bits count: root without the capabilities
    that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), via util-linux's setpriv.  (Running
    as user nobody would need an interpreter outside root's home.)  Skips where that is not possible."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the permission-bypassing capabilities")
    drop = "-dac_override,-dac_read_search"
    res = subprocess.run(["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", ANN2SNN, *map(str, args)],
                         cwd=cwd, env=SUB_ENV, capture_output=True, text=True, timeout=300)
    if "setpriv:" in res.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {res.stderr.strip()}")
    return res


# ============================================================================ 2.1 output paths
def test_train_out_naming_an_existing_file(capsys, tiny_run, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", target, "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "--out", str(target), "is an existing file, not a folder")
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", target / "run", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "is a file, not a folder")


def test_train_out_with_a_name_too_long_for_the_file_system(capsys, tiny_run, tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", tmp_path / ("x" * (name_max + 1)),
                               "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "--out", f"{name_max + 1} bytes long", f"at most {name_max}",
                      "shorter name")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out_root", tmp_path / ("r" * 300)])
    assert_user_error(rc, err, "train", "300 bytes long")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_root_and_out_on_a_read_only_mount(capsys, tiny_run, tmp_path):
    """A read-only file system: even root cannot write there (EROFS)."""
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", tmp_path / "run", "--out_root", ro])
        assert_user_error(rc, err, "train", "out_root", str(ro), "cannot be written", "Read-only file system",
                          "--out_root DIR")
        rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", ro / "run", "--out_root", tmp_path])
        assert_user_error(rc, err, "train", "--out", "Read-only file system")
        rc, err = run_cli(capsys, ["run", "-c", write_yaml(tmp_path / "test.yml", {**TINY, "action": "test",
                                                                                  "mode": "snn"}),
                                   "--checkpoint", tiny_run["best"], "--json", ro / "r.json"])
        assert_user_error(rc, err, "run", "--json", "Read-only file system")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_out_in_a_folder_the_user_cannot_write_to(tiny_run, tmp_path):
    """Permission bits (which root ignores: the CLI runs without CAP_DAC_OVERRIDE)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    mine.chmod(0o555)
    try:
        res = run_without_dac_override(["train", "-c", tiny_run["cfg"], "--out", mine / "run", "--out_root", tmp_path],
                                       tmp_path)
        assert_user_error(res.returncode, res.stderr, "train", "--out", str(mine), "cannot be written",
                          "Permission denied", "fix its permissions")
        assert list(mine.iterdir()) == []
    finally:
        mine.chmod(0o755)


@pytest.mark.slow
def test_unreadable_config_file_for_real(tmp_path):
    cfg = write_yaml(tmp_path / "secret.yml", TINY)
    cfg.chmod(0o000)
    res = run_without_dac_override(["train", "-c", cfg, "--out", tmp_path / "run"], tmp_path)
    assert_user_error(res.returncode, res.stderr, "train", "cannot be read: permission denied", "chmod a+r")
    assert not (tmp_path / "run").exists()


def test_run_json_naming_a_folder(capsys, tiny_run, tmp_path):
    cfg = write_yaml(tmp_path / "test.yml", {**TINY, "action": "test", "mode": "snn"})
    rc, err = run_cli(capsys, ["run", "-c", cfg, "--checkpoint", tiny_run["best"], "--json", tmp_path,
                               "--out", tmp_path / "o"])
    assert_user_error(rc, err, "run", "--json", "is a folder, not a file", "result.json")
    assert not (tmp_path / "o").exists()


# These need `preflight_outputs(args, out)` in cmd_convert / cmd_energy / cmd_table: the error comes
# before any work, in preflight's words (without it, the OSError of the first write ends the command).
@pytest.mark.parametrize("command,flag", [("convert", "--json"), ("energy", "--json"), ("energy", "--csv")])
def test_json_or_csv_naming_a_folder(capsys, tiny_run, tmp_path, command, flag):
    rc, err = run_cli(capsys, [command, "--checkpoint", tiny_run["best"], flag, tmp_path, "--out", tmp_path / "o"])
    assert_user_error(rc, err, command, flag, str(tmp_path), "is a folder, not a file")
    assert not (tmp_path / "o").exists()  # refused before any work


@pytest.mark.parametrize("command", ["convert", "energy", "table"])
def test_evaluation_out_naming_a_file_or_a_too_long_name(capsys, tiny_run, tmp_path, command):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    extra = ["--t", "1-2", "--extra-t", "0"] if command == "table" else []
    rc, err = run_cli(capsys, [command, "--checkpoint", tiny_run["best"], "--out", target, *extra])
    assert_user_error(rc, err, command, "--out", "is an existing file, not a folder")
    rc, err = run_cli(capsys, [command, "--checkpoint", tiny_run["best"], "--out", tmp_path / ("y" * 300), *extra])
    assert_user_error(rc, err, command, "--out", "300 bytes long")
    assert target.read_text() == "keep me"


def test_full_disk_before_training(capsys, tiny_run, tmp_path):
    """A full file system is found before any work: the probe really writes (and removes) a byte."""
    with tmpfs(tmp_path / "full", "64k") as full:
        fill(full)
        rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", full / "run", "--out_root", tmp_path])
        assert_user_error(rc, err, "train", "--out", "no space left on the device", "Free space")
        assert sorted(p.name for p in full.iterdir()) == ["filler"]


@pytest.mark.slow
def test_full_disk_for_a_json_file_keeps_the_run_dir_results(capsys, tiny_run, tmp_path):
    """/dev/full takes the open and fails the write (ENOSPC): main's last line of defence turns the
    OSError into one line; the results already written into the run's folder are kept."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    rc, err = run_cli(capsys, ["convert", "--checkpoint", tiny_run["best"], "--json", "/dev/full",
                               "--out", tmp_path / "o", "--t", "2"])
    assert_user_error(rc, err, "convert", "could not write", "No space left on device", "Free space")
    assert list((tmp_path / "o").glob("*.json"))


def _fail_epoch_saves(monkeypatch, epoch: int, name: str = "last.pt") -> None:
    """torch.save of checkpoint ``name`` in ``epoch`` writes half a file, then the disk is full."""
    real = torch.save

    def save(obj, f, *a, **k):
        is_last = isinstance(obj, dict) and "optimizer" in obj  # best_model.pt has no training state
        if isinstance(obj, dict) and obj.get("epoch") == epoch and is_last == (name == "last.pt"):
            f.write(b"PK\x03\x04 half a zip")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)


def test_full_disk_mid_training_keeps_the_last_good_checkpoints(capsys, tiny_run, tmp_path, monkeypatch):
    run, args = tmp_path / "run", ["train", "-c", tiny_run["cfg"], "--epochs", "3", "--out", tmp_path / "run",
                                   "--out_root", tmp_path]
    _fail_epoch_saves(monkeypatch, 2)
    rc, err = run_cli(capsys, args)
    line = assert_user_error(rc, err, "train", "could not write", "last.pt", "in epoch 2", "No space left on device",
                             "checkpoints of epoch 1", str(run), "are kept", "free space", "--resume")
    assert "Traceback" not in line
    monkeypatch.undo()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert not list(run.glob(".*.tmp"))  # the half-written temporary file is gone
    rc, err = run_cli(capsys, [*args, "--resume"])
    assert rc == 0, err
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    assert [ln.split(",")[0] for ln in (run / "log.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_full_disk_in_the_first_epoch_keeps_nothing_and_says_so(capsys, tiny_run, tmp_path, monkeypatch):
    # last.pt is an epoch's first write (a failed best_model.pt after it: tests/test_faults_disk.py)
    _fail_epoch_saves(monkeypatch, 1, "last.pt")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", tmp_path / "run", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "could not write", "last.pt", "No space left on device",
                      "nothing of it is kept")
    assert not (tmp_path / "run").exists()


def test_full_disk_mid_training_for_real(capsys, tiny_run, tmp_path):
    """A tmpfs sized for one epoch's checkpoints but not for a second last.pt next to them."""
    sizes = {p.name: p.stat().st_size for p in tiny_run["run"].iterdir()}
    pages = {k: -(-v // 4096) for k, v in sizes.items()}
    room = pages["best_model.pt"] + pages["last.pt"] + pages["config.yaml"] + pages["log.csv"] + 1
    room += pages["last.pt"] // 2  # not enough for a second last.pt (nor a second best_model.pt)
    run = tmp_path / "disk" / "run"
    with tmpfs(tmp_path / "disk", f"{room * 4}k"):
        rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--epochs", "3", "--out", run,
                                   "--out_root", tmp_path])
        assert_user_error(rc, err, "train", "in epoch 2", "No space left on device", "checkpoints of epoch 1",
                          "are kept", "--resume")
        assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
        assert checkpoint.load_checkpoint(run / "best_model.pt")["epoch"] in (1, 2)
        assert not list(run.glob(".*.tmp"))


def test_os_errors_no_check_caught_end_in_one_line(capsys, tiny_run, tmp_path, monkeypatch):
    """The last line of defence in main: an OSError anywhere is one line naming the file."""
    def unreadable(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", "/some/data/file.bin")

    from ann2snn.app import pipeline

    monkeypatch.setattr(pipeline, "load_trained", unreadable)
    rc, err = run_cli(capsys, ["run", "-c", write_yaml(tmp_path / "t.yml", {**TINY, "action": "test"}),
                               "--checkpoint", tiny_run["best"]])
    assert_user_error(rc, err, "run", "could not read or write /some/data/file.bin: Permission denied",
                      "Check its permissions")


# ============================================================================ 2.2 config files
@pytest.mark.parametrize("content,words", [
    (b"dim: 16\nid: caf\xe9\n", ["not UTF-8 text", "byte 0xe9 on line 2", "Save it as UTF-8"]),
    pytest.param(b"[" * 100000, ["nested too deeply", "flat mapping"], marks=pytest.mark.slow),
    (b"{a: " * 50000, ["nested too deeply"]),
])
def test_config_files_that_cannot_be_a_config(capsys, tmp_path, content, words):
    (tmp_path / "c.yml").write_bytes(content)
    rc, err = run_cli(capsys, ["train", "-c", tmp_path / "c.yml", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "c.yml", *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yml"]


def test_config_file_that_is_a_directory(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", "-c", tmp_path, "--out_root", tmp_path])
    assert_user_error(rc, err, "train", str(tmp_path), "is a directory, not a file")


def test_unreadable_config_file(capsys, tmp_path, monkeypatch):
    path = write_yaml(tmp_path / "c.yml", TINY)

    def denied(file, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(file))

    monkeypatch.setattr(config, "open", denied, raising=False)  # shadows the builtin in config.py only
    rc, err = run_cli(capsys, ["train", "-c", path, "--out_root", tmp_path])
    assert_user_error(rc, err, "train", str(path), "cannot be read: permission denied")


def test_config_is_read_once_per_invocation(capsys, tiny_run, tmp_path, monkeypatch):
    """`run` hands over to `train` (and `convert`): the file is read once, as a pipe can be."""
    reads = []
    real = config.read_config_file
    monkeypatch.setattr(commands, "read_config_file", lambda p: reads.append(p) or real(p))
    cfg = write_yaml(tmp_path / "c.yml", {**TINY, "action": "train"})
    rc, err = run_cli(capsys, ["run", "-c", cfg, "--out", tmp_path / "run", "--out_root", tmp_path])
    assert rc == 0, err
    assert reads == [str(cfg)]


@pytest.mark.slow
def test_config_from_stdin_and_from_process_substitution(tmp_path):
    """`-c /dev/stdin` (a pipe) for train, and `-c <(…)` for run (which loads it twice in-process)."""
    text = yaml.safe_dump(TINY)
    res = subprocess.run([ANN2SNN, "train", "-c", "/dev/stdin", "--out", str(tmp_path / "a"), "--out_root",
                          str(tmp_path)], input=text, env=SUB_ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "a" / "best_model.pt").is_file()
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["dim"] == 16
    (tmp_path / "c.yml").write_text(yaml.safe_dump({**TINY, "action": "train"}))
    script = f'{ANN2SNN} run -c <(cat {tmp_path / "c.yml"}) --out {tmp_path / "b"} --out_root {tmp_path}'
    res = subprocess.run(["bash", "-c", script], env=SUB_ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "b" / "best_model.pt").is_file()


# ============================================================================ 2.3 edge values
@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_energy_max_batches_must_be_positive(capsys, tiny_run, value):
    rc, err = run_cli(capsys, ["energy", "--checkpoint", tiny_run["best"], "--max-batches", value])
    assert_user_error(rc, err, "energy", "argument --max-batches", "(see `ann2snn energy --help`)")
    assert "usage:" not in err


def test_argparse_errors_are_one_line(capsys):
    rc, err = run_cli(capsys, ["train"])
    assert_user_error(rc, err, "train", "the following arguments are required: -c/--config",
                      "(see `ann2snn train --help`)")
    assert "usage:" not in err
    rc, err = run_cli(capsys, ["frobnicate"])
    assert rc == 2 and err.strip().startswith("ann2snn: error: argument command: invalid choice") and "usage" not in err


def test_zero_epochs_is_refused(capsys, tiny_run, tmp_path):
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--epochs", "0", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "epochs must be >= 1, got 0")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["--t", "--extra_t", "--extra-t"])
def test_time_steps_beyond_the_bound(capsys, tiny_run, key):
    rc, err = run_cli(capsys, ["convert", "--checkpoint", tiny_run["best"], key, str(MAX_STEPS + 1)])
    assert_user_error(rc, err, "convert", f"at most {MAX_STEPS}", f"got {MAX_STEPS + 1}")


@pytest.mark.parametrize("flag,value", [("--t", "1-1000000000"), ("--t", "2,99999"), ("--extra-t", "0-5000")])
def test_table_ranges_beyond_the_bound_are_refused_before_expanding(capsys, tiny_run, flag, value):
    t0 = time.perf_counter()
    rc, err = run_cli(capsys, ["table", "--checkpoint", tiny_run["best"], flag, value])
    assert_user_error(rc, err, "table", flag, f"at most {MAX_STEPS}", repr(value))
    assert time.perf_counter() - t0 < 30
    with pytest.raises(ConfigError, match="at most 4096"):
        config.parse_steps("1-1000000000000", "--t", 1)  # never expanded: no MemoryError, no wait


# ============================================================================ 2.4 corrupt run files
@pytest.mark.parametrize("content,words", [(b"\xff\xfe/runs/x\n", ["is corrupt", "not UTF-8"]),
                                           (b"/a\0b\n", ["is corrupt", "NUL bytes"]),
                                           (b"", ["is corrupt", "holds nothing"]),
                                           (b"/a\n/b\n", ["is corrupt", "2 lines"]),
                                           (b"/no/such/run\n", ["'/no/such/run'", "holds no best_model.pt"])])
def test_corrupt_latest(capsys, tmp_path, content, words):
    (tmp_path / "LATEST").write_bytes(content)
    rc, err = run_cli(capsys, ["convert", "--out_root", tmp_path])
    assert_user_error(rc, err, "convert", "LATEST", *words)


def test_a_corrupt_latest_does_not_stop_training(capsys, tiny_run, tmp_path):
    (tmp_path / "LATEST").write_bytes(b"\xff\xfe")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", tmp_path / "run", "--out_root", tmp_path])
    assert rc == 0, err
    assert rundir.read_latest(tmp_path) == (tmp_path / "run").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "run"]  # no temporary file left


def test_concurrent_latest_updates_never_collide(tmp_path):
    """Before: every update used `.LATEST.tmp`, so two updates at once made one fail."""
    runs = [tmp_path / f"run{i}" for i in range(8)]
    errors: list[BaseException] = []

    def update(run: Path) -> None:
        try:
            for _ in range(100):
                rundir.write_latest(run, tmp_path)
        except BaseException as err:  # noqa: BLE001 - collected and asserted on below
            errors.append(err)

    threads = [threading.Thread(target=update, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert rundir.read_latest(tmp_path) in [r.resolve() for r in runs]
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST"]


@pytest.mark.parametrize("log_bytes,words", [
    (LOG_HEADER.encode() + b"\r\n1,0.01,2.3,10,2.3,10,50,0.1\r\n\xff\xfe\r\n", ["line 3", "not UTF-8"]),
    (LOG_HEADER.encode() + b"\r\n1,0.01,2.3,10,2\0.3,10,50,0.1\r\n", ["line 2", "NUL bytes"]),
    (LOG_HEADER.encode() + b"\r\n1,0.01,2.3\r\n1,0.01,2.3,10,2.3,10,50,0.1\r\n", ["line 2", "3 fields, not 8"]),
    (LOG_HEADER.encode() + b"\r\n1,0.01,abc,10,2.3,10,50,0.1\r\n", ["line 2", "not a row of numbers"]),
    (b"step,loss\r\n1,2.3\r\n", ["not an ann2snn training log", "'step,loss'"]),
])
def test_resume_refuses_a_garbled_log_and_touches_nothing(capsys, tiny_run, tmp_path, log_bytes, words):
    run = copy_run(tiny_run["run"], tmp_path)
    (run / "log.csv").write_bytes(log_bytes)
    before = snapshot(run)
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume"])
    assert_user_error(rc, err, "train", "log.csv", *words)
    assert snapshot(run) == before  # config.yaml and log.csv as they were


def test_resume_drops_only_a_partial_last_log_line(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run["run"], tmp_path)
    good = (run / "log.csv").read_bytes()
    (run / "log.csv").write_bytes(good + b"2,0.0")  # a kill in the middle of epoch 2's row
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume"])
    assert rc == 0, err
    assert (run / "log.csv").read_bytes() == good


# ============================================================================ 2.5 refusal messages
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["raw pickle", "torch.save"])
def test_a_malicious_pickle_is_refused_and_the_message_names_the_global(capsys, tmp_path, how):
    marker, evil = tmp_path / "pwned", tmp_path / "evil.pt"
    if how == "raw pickle":
        evil.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    else:
        torch.save({"model": _Evil(marker), "config": {}}, evil)
    rc, err = run_cli(capsys, ["convert", "--checkpoint", evil, "--out", tmp_path / "o"])
    line = assert_user_error(rc, err, "convert", "cannot be read", "Unsupported global: GLOBAL posix.system",
                             "blocked", "nothing was run")
    assert "weights_only` set to `False`" not in line and "\x1b" not in line
    assert not marker.exists()


# ============================================================================ 2.6 suspicious checkpoints
def test_dataset_mismatch_is_named():
    assert checkpoint.dataset_mismatch(Config(data="digits"), Config(data="Digits")) is None
    why = checkpoint.dataset_mismatch(Config(data="cifar10"), Config(data="digits"), "x.pt")
    assert why and "'cifar10'" in why and "'digits'" in why and "not comparable" in why and "\n" not in why


def test_a_checkpoint_evaluated_on_another_dataset_warns(capsys, caplog, tiny_run, tmp_path):
    ckpt = torch.load(tiny_run["best"], map_location="cpu", weights_only=True)
    ckpt["config"]["data"] = "fashion_mnist"  # as if trained there (the shapes fit digits' model)
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    with caplog.at_level(logging.WARNING, logger="ann2snn"):
        rc, err = run_cli(capsys, ["run", "-c", write_yaml(tmp_path / "t.yml", {**TINY, "action": "test"}),
                                   "--checkpoint", other])
    assert rc == 0, err
    warnings = [r.getMessage() for r in caplog.records if "not comparable" in r.getMessage()]
    assert len(warnings) == 1 and "'fashion_mnist'" in warnings[0] and "'digits'" in warnings[0]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(capsys, tiny_run, tmp_path, value):
    ckpt = torch.load(tiny_run["best"], map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["model"][name].view(-1)[1] = value
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    rc, err = run_cli(capsys, ["convert", "--checkpoint", bad, "--out", tmp_path / "o"])
    assert_user_error(rc, err, "convert", "non-finite weights", name, "1 of")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--inherit", "true", "--model_path", bad,
                               "--out", tmp_path / "r", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "non-finite weights", name)
    assert not (tmp_path / "r").exists()


# ============================================================================ 3. data safety
def test_a_second_training_of_a_locked_run_folder_refuses(capsys, tiny_run, tmp_path):
    """The lock another process would hold (flock conflicts between two opens of the folder, in
    one process too)."""
    run = copy_run(tiny_run["run"], tmp_path)
    before = snapshot(run)
    fd = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume"])
        assert_user_error(rc, err, "train", str(run), "is being trained by another process", "--out/--id")
        new = tmp_path / "new"
        new.mkdir()
        fd2 = os.open(new, os.O_RDONLY)
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", new, "--out_root", tmp_path])
        assert_user_error(rc, err, "train", "is being trained by another process")
        assert new.is_dir() and list(new.iterdir()) == []  # the other training's folder: left alone
        os.close(fd2)
    finally:
        os.close(fd)
    assert snapshot(run) == before
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume"])
    assert rc == 0, err  # the lock went with its holder


SECOND = r"""
import sys
from ann2snn.app import cli
print("ready", flush=True)
sys.stdin.readline()
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_real_trainings_of_one_folder(tiny_run, tmp_path):
    """Two processes: a `--resume` of the folder while its first training runs refuses (it would
    interleave log.csv and overwrite the first one's checkpoints); the first one's run is whole.
    The second process has imported ann2snn before the first one starts, so it reaches the lock
    well within the first one's 60 epochs."""
    run, epochs = tmp_path / "run", 60
    args = ["train", "-c", str(tiny_run["cfg"]), "--epochs", str(epochs), "--out", str(run),
            "--out_root", str(tmp_path)]
    second = subprocess.Popen([sys.executable, "-c", SECOND, *args, "--resume"], env=SUB_ENV, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert second.stdout.readline().strip() == "ready"
    first = subprocess.Popen([ANN2SNN, *args], env=SUB_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and first.poll() is None and not (
                (run / "log.csv").exists() and len((run / "log.csv").read_text().splitlines()) >= 3):
            time.sleep(0.02)
        assert first.poll() is None, "the first training ended before the second one started"
        second.stdin.write("go\n")
        second.stdin.flush()
        _, err2 = second.communicate(timeout=300)
    finally:
        _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert_user_error(second.returncode, err2, "train", "is being trained by another process")
    rows = (run / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(1, epochs + 1)]


def test_failed_new_run_is_still_removed_and_a_users_folder_kept(capsys, tiny_run, tmp_path):
    """The lock neither leaves a folder behind nor hides a user's files from the cleanup."""
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--lr", "1e30", "--out", tmp_path / "a" / "b",
                               "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "loss became nan")
    assert not (tmp_path / "a").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--lr", "1e30", "--out", mine, "--out_root", tmp_path])
    assert rc == 2
    assert (mine / "notes.txt").read_text() == "keep me"


def test_resume_with_changed_run_keys_is_refused_and_names_them(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run["run"], tmp_path)
    before = snapshot(run)
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume",
                               "--lr", "0.5", "--epochs", "3", "--mixup", "0.2"])
    assert_user_error(rc, err, "train", "changed settings", "lr: 0.01 -> 0.5", "epochs: 1 -> 3", "mixup: 0.0 -> 0.2",
                      "config.yaml")
    assert snapshot(run) == before  # config.yaml not rewritten


def test_resume_with_safe_changes_records_what_ran(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run["run"], tmp_path)
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume",
                               "--eval_bs", "8", "--workers", "0", "--extra_t", "3", "--model_path", "/x.pt"])
    assert rc == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["eval_bs"] == 8 and saved["extra_t"] == 3
    assert saved["model_path"] is None  # how the run started: kept from last.pt
    assert saved["lr"] == TINY.get("lr", Config().lr) and saved["epochs"] == 1


def test_resume_safe_keys_are_documented_config_keys():
    assert set(RESUME_SAFE_KEYS) <= set(FIELD_NAMES) and len(set(RESUME_SAFE_KEYS)) == len(RESUME_SAFE_KEYS)
    text = Path(config.__file__).read_text()
    for key in RESUME_SAFE_KEYS:
        assert f'    "{key}",  #' in text or f'"{key}",\n' in text, key  # each one commented
    for key in ("lr", "wd", "epochs", "warmup_epochs", "bs", "seed", "data", "use_amp", "sync_bn", *config.MODEL_KEYS):
        assert key not in RESUME_SAFE_KEYS, key
    stored, new = Config(model="spikformer", t=4), Config(model="spikformer", t=8)
    assert config.resume_changes(stored, new, direct=True) == ["t: 4 -> 8"]  # a direct SNN's training T
    assert config.resume_changes(Config(t=4), Config(t=8)) == []  # conversion only


@pytest.mark.parametrize("text,words", [("name: my project\nversion: 2\n", ["'name'", "not ann2snn config keys"]),
                                        ("- a\n- b\n", ["a list", "not a mapping"]),
                                        ("\xff\xfe", ["cannot be read as YAML"]),
                                        ("", ["holds nothing"])])
def test_a_foreign_config_yaml_is_never_overwritten(capsys, tiny_run, tmp_path, text, words):
    (tmp_path / "config.yaml").write_bytes(text.encode("latin-1"))
    before = snapshot(tmp_path)
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", tmp_path, "--out_root", tmp_path / "root"])
    assert_user_error(rc, err, "train", "config.yaml", "is not an ann2snn run's config", *words, "another --out")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_foreign_log_csv_is_never_overwritten(capsys, tiny_run, tmp_path):
    (tmp_path / "log.csv").write_text("date,amount\n2024-01-01,3\n")
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", tmp_path, "--out_root", tmp_path / "root"])
    assert_user_error(rc, err, "train", "log.csv", "not an ann2snn training log", "'date,amount'")
    assert (tmp_path / "log.csv").read_text() == "date,amount\n2024-01-01,3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_an_own_run_left_before_its_first_checkpoint_is_reused(capsys, tiny_run, tmp_path):
    """What a run killed in epoch 1 leaves is ours: config.yaml of config keys, a header-only or
    half-written log."""
    (tmp_path / "config.yaml").write_text("id: run\n")
    (tmp_path / "log.csv").write_text(LOG_HEADER[:10])
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", tmp_path, "--out_root", tmp_path / "root"])
    assert rc == 0, err
    assert (tmp_path / "best_model.pt").is_file()
