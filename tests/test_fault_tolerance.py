"""Fault tolerance: atomic, weights-only checkpoints; --resume continues the same run bit for bit;
a training process killed with SIGKILL at random points, several times, always resumes; and
same-seed CPU runs are deterministic.

All runs are tiny digits runs on one CPU thread (the reference runs in this process, the killed
ones in subprocesses; both with one intra-op thread, so their arithmetic is the same).
"""
from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ann2snn.app import cli, rundir
from ann2snn.app.checkpoint import atomic_save, load_checkpoint
from ann2snn.app.train import LOG_FIELDS

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "configs" / "digits.yml")
TINY = ["--train_subset", "160", "--test_subset", "64", "--bs", "32", "--dim", "32", "--num_heads", "4",
        "--device", "cpu"]
EPOCHS = 6
TRAINING_KEYS = {"format", "config", "model", "optimizer", "scheduler", "scaler", "epoch", "best", "rng",
                 "metrics"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the subprocesses (OMP_NUM_THREADS=1): same arithmetic, and no
    thread oversubscription on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_args(out: Path, epochs: int = EPOCHS, *extra: str) -> list[str]:
    return ["train", "-c", DIGITS, *TINY, "--epochs", str(epochs), "--out", str(out),
            "--out_root", str(out.parent), *extra]


def metrics(run: Path) -> list[list[str]]:
    """log.csv without the wall-clock column (epoch_s)."""
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    i = rows[0].index("epoch_s")
    return [r[:i] + r[i + 1:] for r in rows]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run (in this process)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert cli.main(train_args(out)) == 0
    return out


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_contents_are_weights_only_safe(reference):
    ckpt = torch.load(reference / "last.pt", map_location="cpu", weights_only=True)
    assert TRAINING_KEYS <= set(ckpt)
    assert ckpt["epoch"] == EPOCHS and ckpt["format"] >= 1 and ckpt["config"]["epochs"] == EPOCHS
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor) and ckpt["optimizer"]["state"]
    best = load_checkpoint(reference / "best_model.pt")  # the loader the CLI uses (weights_only)
    assert best["epoch"] <= EPOCHS and "optimizer" not in best
    assert not list(reference.glob(".*.tmp"))


def test_atomic_save_keeps_the_old_file_when_a_write_dies(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    atomic_save({"x": torch.arange(3)}, target)

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")  # a partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"x": torch.arange(5)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncate_log_drops_rows_after_the_checkpoint_and_partial_lines(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("epoch,a,b\r\n1,x,y\r\n2,x,y\r\n3,x,y\r\n4,x")
    rundir.truncate_log(log, 2)
    assert log.read_text().splitlines() == ["epoch,a,b", "1,x,y", "2,x,y"]


# ----------------------------------------------------------------------------- determinism
def test_same_seed_cpu_runs_have_identical_per_epoch_metrics(reference, tmp_path):
    again = tmp_path / "run"
    assert cli.main(train_args(again)) == 0
    assert metrics(again) == metrics(reference)
    assert_same_weights(again / "last.pt", reference / "last.pt")


class _Crash(BaseException):
    """Stands in for a kill in the middle of an epoch (not a user error: nothing catches it)."""


def test_resume_after_a_crash_is_bit_identical(reference, tmp_path, monkeypatch):
    import ann2snn.app.train as train_mod

    real, calls = train_mod.evaluate_ann, []

    def crashing_eval(*a, **k):  # epochs 1-3 complete; epoch 4 dies after its training steps
        calls.append(1)
        if len(calls) == 4:
            raise _Crash
        return real(*a, **k)

    run = tmp_path / "run"
    monkeypatch.setattr(train_mod, "evaluate_ann", crashing_eval)
    with pytest.raises(_Crash):
        cli.main(train_args(run))
    monkeypatch.undo()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    assert cli.main(train_args(run, EPOCHS, "--resume")) == 0
    assert metrics(run) == metrics(reference)
    assert_same_weights(run / "last.pt", reference / "last.pt")
    assert_same_weights(run / "best_model.pt", reference / "best_model.pt")


def test_resume_of_a_finished_run_changes_nothing(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert cli.main(train_args(run, EPOCHS, "--resume")) == 0
    assert metrics(run) == metrics(reference)
    assert_same_weights(run / "last.pt", reference / "last.pt")


# ----------------------------------------------------------------------------- SIGKILL
# A helper process imports ann2snn once, then forks one training process per attempt and kills it
# with SIGKILL after a random delay (the helper is the only one that reaps its children, so it
# never signals a reused pid).  Forking saves the ~5 s import per attempt on a loaded 2-core box.
HELPER = r"""
import json, os, signal, sys, time
from ann2snn.app import cli, data
from ann2snn.app.config import load_config



def logged(path):  # the last epoch in log.csv with a complete row; -1 before the log exists
    try:
        with open(path) as f:
            rows = [r.split(",") for r in f.read().splitlines()[1:]]
    except FileNotFoundError:
        return -1
    return max([0] + [int(r[0]) for r in rows if len(r) == 8 and r[0].isdigit()])


data.build_datasets(load_config(sys.argv[1]))  # warm up sklearn and the digits set
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(2, 1)  # the child's prints must not mix with this protocol on stdout
        try:
            rc = cli.main(job["args"])
        except BaseException:
            import traceback
            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    killed, status = False, None
    if job.get("kill_after") is not None:
        while logged(job["log"]) < job["wait_rows"]:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            time.sleep(0.01)
        deadline = time.monotonic() + job["kill_after"]
        while status is None and time.monotonic() < deadline:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            time.sleep(0.005)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            killed = True
    if status is None:
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"killed": killed, "code": code}), flush=True)
"""


def _checkpoint_epoch(run: Path) -> int:
    """The epoch of last.pt (0 if none); fails if any checkpoint is unreadable weights-only."""
    if (run / "best_model.pt").exists():
        torch.load(run / "best_model.pt", map_location="cpu", weights_only=True)
    if not (run / "last.pt").exists():
        return 0
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert TRAINING_KEYS <= set(ckpt)
    return int(ckpt["epoch"])


def _logged_epoch(run: Path) -> int:
    """The last complete epoch row in log.csv (0 if none)."""
    try:
        with open(run / "log.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
    except FileNotFoundError:
        return 0
    return max((int(r[0]) for r in rows if len(r) == 8 and r[0].isdigit()), default=0)


def _epoch_seconds(run: Path) -> float:
    """The median wall time of one epoch (training steps + evaluation) of a run; log.csv keeps 0.1 s,
    so at least 0.05 s."""
    with open(run / "log.csv", newline="") as f:
        times = sorted(float(r["epoch_s"]) for r in csv.DictReader(f))
    return max(0.05, times[len(times) // 2])


def test_sigkill_at_random_points_then_resume(reference, tmp_path):
    import json
    import shutil

    rng = random.Random(6)  # seeded: the same kill points (in epochs) on every run of the test
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1"}
    helper = subprocess.Popen([sys.executable, "-c", HELPER, DIGITS], cwd=tmp_path, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=open(tmp_path / "helper.log", "w"))
    # Delays are drawn in units of one epoch as the reference run measured it on this machine, so
    # that a fast machine does not finish the run before the kill (an absolute delay did on CI).
    epoch_s = _epoch_seconds(reference)

    def job(args, wait_rows=0, kill_after=None):
        helper.stdin.write(json.dumps({"args": args, "wait_rows": wait_rows, "kill_after": kill_after,
                                       "log": str(run / "log.csv")}) + "\n")
        helper.stdin.flush()
        return json.loads(helper.stdout.readline())

    try:
        assert json.loads(helper.stdout.readline()) == {"ready": True}
        T0 = time.monotonic()
        kills, history = 0, []
        for attempt in range(4):  # a run that still finished before its kill is started over
            last_epoch, kills = 0, 0
            # kill k: once log.csv shows epoch targets[k] (0: once the run exists), after a random
            # delay of up to one epoch -- in training steps, evaluation, or a checkpoint write. At
            # least two epochs remain after each target, so the kill lands before the run ends.
            targets = sorted(rng.sample(range(EPOCHS - 2), 3))
            while kills < 3:
                res = job(train_args(run, EPOCHS, *(["--resume"] if kills else [])), targets[kills],
                          rng.uniform(0.0, 1.0) * epoch_s)
                epoch, logged = _checkpoint_epoch(run), _logged_epoch(run)
                history.append((attempt, res, logged, epoch, round(time.monotonic() - T0, 1)))
                if not res["killed"]:
                    assert res["code"] == 0, (history, (tmp_path / "helper.log").read_text())
                    break
                kills += 1
                assert epoch >= last_epoch, f"the checkpoint went backwards: {history}"
                assert epoch >= logged - 1, f"lost more than one epoch: {history}"
                last_epoch = epoch
            if kills == 3:
                break
            shutil.rmtree(run)
        res = job(train_args(run, EPOCHS, "--resume"))
        assert res == {"killed": False, "code": 0}, (history, (tmp_path / "helper.log").read_text())
    finally:
        helper.stdin.close()
        helper.wait(timeout=60)
    print(epoch_s, history)
    assert kills == 3, (epoch_s, history)
    assert "Traceback" not in (tmp_path / "helper.log").read_text()
    assert metrics(run) == metrics(reference)
    assert_same_weights(run / "last.pt", reference / "last.pt")
    assert not list(run.glob(".*.tmp"))


# ----------------------------------------------------------------------------- run directories
def test_failed_run_is_removed_but_a_users_folder_is_not(tmp_path):
    class Boom(Exception):
        pass

    fresh, users = tmp_path / "fresh", tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("keep me")
    for d in (fresh, users):
        with pytest.raises(Boom), rundir.cleanup_on_failure():
            rundir.claim(d)
            (d / "config.yaml").write_text("x")
            raise Boom
    assert not fresh.exists()
    assert (users / "notes.txt").read_text() == "keep me" and (users / "config.yaml").exists()


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(reference, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("id: run\n")  # what a run killed in epoch 1 leaves
    (run / "log.csv").write_text(",".join(LOG_FIELDS) + "\r\n")  # its header (a foreign one is refused)
    assert cli.main(train_args(run, EPOCHS, "--resume")) == 0
    assert metrics(run) == metrics(reference)
