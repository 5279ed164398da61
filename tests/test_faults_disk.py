"""Disk faults and output files (issue 17): one atomic write for every result and run file (never
through a link, no partial file on a full disk, the OSError naming the file), a full disk inside
``torch.save`` (D1), a ``log.csv`` ending in bytes that are not UTF-8 (D2), control characters in
run names, and ``train --resume --extend``.

Where the fault needs the kernel (a full file system) the test mounts a small tmpfs with
helpers.tmpfs, and is skipped where that is not possible (not root, no mount).
"""
from __future__ import annotations

import csv
import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from ann2snn.app import cli, rundir
from ann2snn.app.checkpoint import atomic_save, load_checkpoint
from ann2snn.results import Accuracy

from helpers import ROOT, assert_user_error, copy_run, fill, run_cli, snapshot, tmpfs

DIGITS = ROOT / "configs" / "digits.yml"
# configs/digits.yml's model (dim 64: best_model.pt ~420 kB, last.pt ~1.3 MB) on a few samples, so
# that the tmpfs sizes of the issue (200 kB, 1 MB) fill up inside torch.save, as they did there
DIGITS_FAST = ["--epochs", "1", "--train_subset", "64", "--test_subset", "32", "--device", "cpu"]
PAGE = 4096
pytestmark = pytest.mark.usefixtures("offline")


def pages(n_bytes: int) -> int:
    return -(-n_bytes // PAGE)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, int]:
    """The sizes of a 1-epoch configs/digits.yml run's files (on a real disk)."""
    base = tmp_path_factory.mktemp("digits")
    torch.set_num_threads(1)
    assert cli.main(["train", "-c", str(DIGITS), *DIGITS_FAST, "--out", str(base / "run"),
                     "--out_root", str(base)]) == 0
    return {p.name: p.stat().st_size for p in (base / "run").iterdir()}


def outside_file(tmp_path: Path) -> Path:
    """A file outside every output folder, with known content (what a planted link points at)."""
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("do not overwrite me\n")
    return victim


# ============================================================================ the atomic writer
def test_atomic_write_replaces_a_link_never_its_target(tmp_path):
    from ann2snn.app import files as atomic

    victim = outside_file(tmp_path)
    link = tmp_path / "table.md"
    link.symlink_to(victim)
    atomic.atomic_write_text(link, "# new\n")
    assert victim.read_text() == "do not overwrite me\n"
    assert not link.is_symlink() and link.read_text() == "# new\n"
    assert stat.S_IMODE(link.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "table.md"]  # no temporary file left


def test_atomic_write_failure_keeps_the_old_file_and_names_it(tmp_path, monkeypatch):
    from ann2snn.app import files as atomic

    target = tmp_path / "table.json"
    target.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError) as err:
        atomic.atomic_write_text(target, "new\n")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target) and err.value.filename2 is None
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_atomic_write_into_a_device_writes_in_place(tmp_path):
    """``--json /dev/null`` (or a pipe): written into, not replaced by a regular file."""
    from ann2snn.app import files as atomic

    atomic.atomic_write_text("/dev/null", "{}\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_torch_save_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path):
    """torch's zip writer raises a RuntimeError ("unexpected pos …") chained on the OSError."""
    with tmpfs(tmp_path / "small", "64k") as small:
        target = small / "last.pt"
        with pytest.raises(OSError) as err:
            atomic_save({"w": torch.zeros(100_000)}, target)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
        assert list(small.iterdir()) == []  # neither the target nor a temporary file


# ============================================================================ reports through links
def test_links_planted_in_a_table_folder_are_replaced_not_followed(capsys, tiny_run, tmp_path):
    victim = outside_file(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    for name in ("table.md", "table.json", "table_heatmap.png"):
        (out / name).symlink_to(victim)
    rc, err = run_cli(capsys, ["table", "--checkpoint", tiny_run["best"], "--t", "1-2", "--extra-t", "0", "--out", out])
    assert rc == 0, err
    assert victim.read_text() == "do not overwrite me\n"
    for name in ("table.md", "table.json", "table_heatmap.png"):
        assert (out / name).is_file() and not (out / name).is_symlink(), name
    assert (out / "table.md").read_text().startswith("# Accuracy table")


@pytest.mark.slow
def test_links_planted_in_a_convert_folder_are_replaced_not_followed(capsys, tiny_run, tmp_path):
    victim = outside_file(tmp_path)
    out = tmp_path / "o"
    out.mkdir()
    for name in ("convert_t2_e0.json", "accuracy.png"):
        (out / name).symlink_to(victim)
    rc, err = run_cli(capsys, ["convert", "--checkpoint", tiny_run["best"], "--t", "2", "--out", out])
    assert rc == 0, err
    assert victim.read_text() == "do not overwrite me\n"
    assert not (out / "convert_t2_e0.json").is_symlink() and '"snn"' in (out / "convert_t2_e0.json").read_text()
    assert not (out / "accuracy.png").is_symlink()


def test_a_full_disk_while_writing_a_report_leaves_no_partial_file(capsys, tiny_run, tmp_path):
    """Room for table.md and table.csv (a page each) but not table.json: the two are complete,
    table.json is not there at all (never 0 bytes), and the message names it."""
    with tmpfs(tmp_path / "disk", "256k") as disk:
        fill(disk)
        filler = disk / "filler"
        os.truncate(filler, filler.stat().st_size - 2 * PAGE)
        assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize == 2 * PAGE
        out = disk / "o"
        rc, err = run_cli(capsys, ["table", "--checkpoint", tiny_run["best"], "--t", "1-2", "--extra-t", "0",
                                   "--out", out])
        assert_user_error(rc, err, "table", f"could not write {out / 'table.json'}", "No space left on device",
                          "Free space")
        assert sorted(p.name for p in out.iterdir()) == ["table.csv", "table.md"]
        assert (out / "table.md").read_text().endswith("|\n")
        rows = list(csv.reader((out / "table.csv").open(newline="")))
        assert rows[0][0] == "t" and len(rows) == 3  # the header and the rows t = 1, 2


# ============================================================================ D1: a full disk in torch.save
@pytest.mark.parametrize("size", ["200k", "1m"])
def test_full_disk_in_the_first_epoch_for_real(capsys, tmp_path, size):
    """The issue's sizes: last.pt, written first, does not fit; nothing of the run is kept (no
    best_model.pt and LATEST without a last.pt), and the one line says so."""
    root = tmp_path / "root"
    with tmpfs(tmp_path / "F", size) as F:
        rc, err = run_cli(capsys, ["train", "-c", DIGITS, *DIGITS_FAST, "--out", F / "r", "--out_root", root])
        assert_user_error(rc, err, "train", f"could not write {F / 'r' / 'last.pt'} in epoch 1",
                          "No space left on device", "nothing of it is kept", "free space")
        assert not (F / "r").exists() and list(F.iterdir()) == []
    assert not (root / "LATEST").exists()


def test_full_disk_after_last_pt_keeps_it_and_resume_writes_the_rest(capsys, digits, tmp_path):
    """Room for last.pt but not for best_model.pt beside it: last.pt of epoch 1 is kept, the
    message says so, and `--resume` (after freeing space) writes best_model.pt and LATEST from it."""
    room = pages(digits["last.pt"]) + pages(digits["config.yaml"]) + pages(digits["log.csv"]) + 2
    room += pages(digits["best_model.pt"]) // 2
    root, args = tmp_path / "root", ["train", "-c", DIGITS, *DIGITS_FAST, "--out_root", tmp_path / "root"]
    with tmpfs(tmp_path / "F", f"{room * 4}k") as F:
        run = F / "r"
        rc, err = run_cli(capsys, [*args, "--out", run])
        assert_user_error(rc, err, "train", f"could not write {run / 'best_model.pt'} in epoch 1",
                          "No space left on device", "last.pt of epoch 1 is kept", "best_model.pt was not written yet",
                          "LATEST was not updated", "`--resume`")
        assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt", "log.csv"]
        assert load_checkpoint(run / "last.pt")["epoch"] == 1 and not (root / "LATEST").exists()
        subprocess.run(["mount", "-o", f"remount,size={room * 8}k", str(F)], check=True)  # space freed
        rc, err = run_cli(capsys, [*args, "--out", run, "--resume"])
        assert rc == 0, err
        best, last = load_checkpoint(run / "best_model.pt"), load_checkpoint(run / "last.pt")
        assert best["epoch"] == 1 and "optimizer" not in best
        assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
        assert Path((root / "LATEST").read_text().strip()) == run.resolve()


def test_a_failed_latest_update_is_named_and_resume_completes_it(capsys, tiny_run, tmp_path, monkeypatch):
    real = rundir.atomic_write_text

    def full(path, text):
        if Path(path).name == rundir.LATEST:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, text)

    run, root = tmp_path / "run", tmp_path / "root"
    args = ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", root]
    monkeypatch.setattr(rundir, "atomic_write_text", full)
    rc, err = run_cli(capsys, args)
    assert_user_error(rc, err, "train", f"could not write {root / 'LATEST'} in epoch 1",
                      "last.pt and best_model.pt of epoch 1", "LATEST does not name this run yet", "--resume",
                      f"--checkpoint {run / 'best_model.pt'}")
    assert (run / "best_model.pt").is_file() and (run / "last.pt").is_file() and not (root / "LATEST").exists()
    monkeypatch.undo()
    rc, err = run_cli(capsys, [*args, "--resume"])
    assert rc == 0, err
    assert Path((root / "LATEST").read_text().strip()) == run.resolve()


def test_a_kill_between_last_pt_and_best_model_pt_is_completed_by_resume(capsys, tiny_run, tmp_path, monkeypatch):
    """A kill (here: Ctrl-C) after last.pt was written: best_model.pt of that epoch is written by --resume."""
    import ann2snn.app.train as train_mod

    real = train_mod.atomic_save

    def interrupted(obj, path):
        if Path(path).name == "best_model.pt" and obj["epoch"] == 2:
            raise KeyboardInterrupt
        return real(obj, path)

    run, args = tmp_path / "run", ["train", "-c", tiny_run["cfg"], "--out", tmp_path / "run", "--out_root", tmp_path,
                                   "--epochs", "2", "--lr", "1e-4"]
    acc = iter([10.0, 20.0])  # epoch 2 improves on epoch 1
    monkeypatch.setattr(train_mod, "atomic_save", interrupted)
    monkeypatch.setattr(train_mod, "evaluate_ann", lambda *a, **k: Accuracy(top1=next(acc), top5=100.0, loss=1.0))
    rc, _ = run_cli(capsys, args)
    assert rc == 130
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and load_checkpoint(run / "best_model.pt")["epoch"] == 1
    monkeypatch.undo()
    rc, err = run_cli(capsys, [*args, "--resume"])
    assert rc == 0, err
    assert load_checkpoint(run / "best_model.pt")["epoch"] == 2


# ============================================================================ D2: log.csv ending in non-UTF-8
@pytest.mark.parametrize("tail", [b"\xff", b"2,0.01,2.3\xe2\x82"])  # a stray byte; a UTF-8 sequence cut by a kill
def test_resume_with_a_log_ending_in_bytes_that_are_not_utf8(capsys, tiny_run, tmp_path, tail):
    run = copy_run(tiny_run["run"], tmp_path)
    good = (run / "log.csv").read_bytes()
    (run / "log.csv").write_bytes(good + tail)
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume"])
    assert rc == 0, err
    assert (run / "log.csv").read_bytes() == good


def test_resume_never_appends_through_a_linked_log(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run["run"], tmp_path)
    victim = outside_file(tmp_path)
    victim.write_bytes((run / "log.csv").read_bytes())
    before = victim.read_bytes()
    (run / "log.csv").unlink()
    (run / "log.csv").symlink_to(victim)
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path, "--resume",
                               "--extend", "--epochs", "2"])
    assert rc == 0, err
    assert victim.read_bytes() == before
    assert not (run / "log.csv").is_symlink()
    assert [r[0] for r in csv.reader((run / "log.csv").open(newline=""))] == ["epoch", "1", "2"]


# ============================================================================ control characters in names
@pytest.mark.parametrize("flag,value,words", [
    ("--id", "a\nb", ["id must not hold control characters", "'a\\nb'", "--id run2"]),
    ("--id", "r\x1b[31m", ["id must not hold control characters"]),
    ("--out", "run\tx", ["--out", "holds a control character (0x09)", "Pass a plain name"]),
    ("--out_root", "root\x7f", ["holds a control character (0x7f)", "--out_root DIR"]),
])
def test_control_characters_in_run_names_are_refused(capsys, tiny_run, tmp_path, monkeypatch, flag, value, words):
    monkeypatch.chdir(tmp_path)
    extra = [] if flag == "--out_root" else ["--out_root", tmp_path / "root"]
    rc, err = run_cli(capsys, ["train", "-c", tiny_run["cfg"], flag, value, *extra])
    assert_user_error(rc, err, "train", *words)
    assert list(tmp_path.iterdir()) == []


# ============================================================================ --extend
def test_extend_a_finished_run(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run["run"], tmp_path)
    base = ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path]
    rc, err = run_cli(capsys, [*base, "--resume", "--extend", "--epochs", "2"])
    assert rc == 0, err
    rows = list(csv.DictReader((run / "log.csv").open(newline="")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # the cosine rebuilt for 2 epochs: epoch 2 runs at lr (1 + cos(pi / 2)) / 2 = lr / 2 (the
    # finished 1-epoch schedule had reached 0, and would have stayed there)
    assert float(rows[0]["lr"]) == 0.01 and float(rows[1]["lr"]) == pytest.approx(0.005)
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and last["config"]["epochs"] == 2
    assert last["extended"] == [{"after_epoch": 1, "from_epochs": 1, "to_epochs": 2}]


def test_extend_refusals(capsys, tiny_run, tmp_path):
    run = copy_run(tiny_run["run"], tmp_path)
    before = snapshot(run)
    base = ["train", "-c", tiny_run["cfg"], "--out", run, "--out_root", tmp_path]
    rc, err = run_cli(capsys, [*base, "--resume", "--extend", "--epochs", "1"])
    assert_user_error(rc, err, "train", "--extend needs a larger --epochs than the run's 1 (got 1)", "--epochs 2")
    rc, err = run_cli(capsys, [*base, "--extend", "--epochs", "3"])
    assert_user_error(rc, err, "train", "--extend lengthens an existing run, so it needs --resume")
    rc, err = run_cli(capsys, [*base, "--resume", "--epochs", "3"])  # the old refusal, now with the way out
    assert_user_error(rc, err, "train", "changed settings", "epochs: 1 -> 3", "add --extend")
    rc, err = run_cli(capsys, [*base, "--resume", "--extend", "--epochs", "3", "--lr", "0.5"])
    assert_user_error(rc, err, "train", "changed settings", "lr: 0.01 -> 0.5")
    assert "epochs" not in err
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("warmup", [0, 2])
def test_extended_schedule_is_the_new_schedule_from_the_resume_point(warmup):
    """After k epochs of an E-epoch run, extended to N: the rates from epoch k + 1 on are those of
    an N-epoch schedule (the rates of epochs 1..k were the E-epoch schedule's)."""
    from ann2snn.app.config import Config
    from ann2snn.app.train import _extend_schedule, build_optimizer, build_scheduler

    def rates(cfg, steps, extend_to=None):
        opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
        sched = build_scheduler(opt, cfg)
        out = []
        for i in range(steps):
            if extend_to and i == 3:
                sched2 = build_scheduler(opt, Config(**{**cfg.to_dict(), "epochs": extend_to}))
                sched2.load_state_dict(sched.state_dict())
                sched = sched2
                _extend_schedule(sched, opt, extend_to)
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    short, long_ = Config(epochs=4, warmup_epochs=warmup), Config(epochs=10, warmup_epochs=warmup)
    assert rates(short, 10, extend_to=10)[3:] == pytest.approx(rates(long_, 10)[3:])
    assert rates(short, 3) == pytest.approx(rates(short, 10, extend_to=10)[:3])
