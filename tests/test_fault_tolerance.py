"""Fault tolerance: atomic, weights-only checkpoints; --resume continues the same run bit for bit;
a training process killed with SIGKILL at each kind of point of an epoch, once per epoch, always
resumes; and same-seed CPU runs are deterministic.

All runs are tiny digits runs on one CPU thread (the reference runs in this process, the killed
ones in subprocesses; both with one intra-op thread, so their arithmetic is the same).
"""
from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
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
@pytest.mark.slow
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
@pytest.mark.slow
def test_same_seed_cpu_runs_have_identical_per_epoch_metrics(reference, tmp_path):
    again = tmp_path / "run"
    assert cli.main(train_args(again)) == 0
    assert metrics(again) == metrics(reference)
    assert_same_weights(again / "last.pt", reference / "last.pt")


class _Crash(BaseException):
    """Stands in for a kill in the middle of an epoch (not a user error: nothing catches it)."""


@pytest.mark.slow
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


@pytest.mark.slow
def test_resume_of_a_finished_run_changes_nothing(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert cli.main(train_args(run, EPOCHS, "--resume")) == 0
    assert metrics(run) == metrics(reference)
    assert_same_weights(run / "last.pt", reference / "last.pt")


# ----------------------------------------------------------------------------- SIGKILL
# A helper process imports ann2snn and traces a model once, then forks one training process per
# job (forking saves those ~5 s per job on a loaded 2-core box).  A job may name a kill point of
# the training loop: the child patches the function that reaches it, and there writes the point's
# name into a pipe and waits; the helper then kills it with SIGKILL (the helper is the only one
# that reaps its children, so it never signals a reused pid).  So each kill lands at its point on
# any machine, however fast or loaded: no delay is measured or waited for.  (Before, the kills
# came after random delays measured in epochs, and a fast machine could finish first.)
HELPER = r"""
import inspect, io, json, os, signal, sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import ann2snn.app.train as train
from ann2snn.app import cli, data
from ann2snn.app.config import load_config
from ann2snn.app.pipeline import build_model


def stop(where, reached, hold):
    # tell the helper where we are, then wait for its SIGKILL (EOF on `hold`: the helper is gone)
    os.write(reached, where.encode())
    os.read(hold, 1)
    os._exit(3)


def plant(kill, reached, hold):
    # Make this (child) process stop at kill = {"epoch": E, "at": AT, "n": N} of its training:
    # AT "step": before optimizer step N of epoch E; "eval": at the start of its evaluation; "log":
    # its log.csv row written, no checkpoint yet; "last.pt" / "best_model.pt": half of that file
    # written (in its temporary file); "after last.pt": last.pt in place, best_model.pt not yet.
    epoch, at = kill["epoch"], kill["at"]
    where = f"{at} in epoch {epoch}" + (f", step {kill['n']}" if at == "step" else "")
    now = {"epoch": 0, "steps": 0}
    real_epoch, real_eval, real_save, real_torch_save = (train._train_one_epoch, train.evaluate_ann,
                                                         train.atomic_save, torch.save)

    def one_epoch(*a, **k):
        now["epoch"], now["steps"] = inspect.signature(real_epoch).bind(*a, **k).arguments["epoch"], 0
        return real_epoch(*a, **k)

    def before_step(optimizer, args, kwargs):
        now["steps"] += 1
        if at == "step" and now["epoch"] == epoch and now["steps"] == kill["n"]:
            stop(where, reached, hold)

    def evaluate(*a, **k):
        if at == "eval" and now["epoch"] == epoch:
            stop(where, reached, hold)
        return real_eval(*a, **k)

    def half_save(obj, f, *a, **k):
        buf = io.BytesIO()
        real_torch_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        stop(where, reached, hold)

    def save(obj, path):
        name, mine = Path(path).name, obj.get("epoch") == epoch
        if mine and at == "log" and name == "last.pt":
            stop(where, reached, hold)
        if mine and at == name:
            torch.save = half_save
        real_save(obj, path)
        if mine and at == "after " + name:
            stop(where, reached, hold)

    train._train_one_epoch, train.evaluate_ann, train.atomic_save = one_epoch, evaluate, save
    register_optimizer_step_pre_hook(before_step)


cfg = load_config(sys.argv[1])
build_model(cfg, data.build_datasets(cfg)[2])  # warm up sklearn, the digits set and fx tracing (its lazy imports)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    reached_r, reached_w = os.pipe()  # child -> helper: the kill point is reached
    hold_r, hold_w = os.pipe()  # never written: the child waits on it for the kill
    pid = os.fork()
    if pid == 0:
        os.close(reached_r)
        os.close(hold_w)
        os.dup2(2, 1)  # the child's prints must not mix with this protocol on stdout
        try:
            if job["kill"] is not None:
                plant(job["kill"], reached_w, hold_r)
            rc = cli.main(job["args"])
        except BaseException:
            import traceback
            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    os.close(reached_w)
    os.close(hold_r)
    at = os.read(reached_r, 200).decode()  # "" (end of file): the child ended without reaching a kill point
    if at:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(reached_r)
    os.close(hold_w)
    print(json.dumps({"killed": bool(at), "at": at, "code": os.waitstatus_to_exitcode(status)}), flush=True)
"""
# What a kill at each point leaves: (the epoch of last.pt, the last epoch in log.csv), for a kill in
# epoch E: (E - 1, E - 1) before the log row, (E - 1, E) after it until last.pt is in place, then (E, E).
KILL_POINTS = {"step": (-1, -1), "eval": (-1, -1), "log": (-1, 0), "last.pt": (-1, 0), "after last.pt": (0, 0),
               "best_model.pt": (0, 0)}


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


def _kill_plan(reference: Path, rng: random.Random) -> list[dict]:
    """One kill per epoch, each at a different kind of point (:data:`KILL_POINTS`), in a seeded
    random order.  best_model.pt is written only in an epoch that improved: its kill goes to the
    epoch of the reference run's best_model.pt (the resumed run is the same run, bit for bit)."""
    best = int(load_checkpoint(reference / "best_model.pt")["epoch"])
    others = [k for k in KILL_POINTS if k != "best_model.pt"]
    rng.shuffle(others)
    points = iter(others)
    # an epoch has 160 / 32 = 5 optimizer steps (TINY): step n <= 4 is always reached
    return [{"epoch": e, "at": "best_model.pt" if e == best else next(points), "n": rng.randint(1, 4)}
            for e in range(1, EPOCHS + 1)]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(reference, tmp_path):
    import json

    rng = random.Random(6)  # seeded: the same kill points on every run of the test
    plan = _kill_plan(reference, rng)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1"}
    helper = subprocess.Popen([sys.executable, "-c", HELPER, DIGITS], cwd=tmp_path, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=open(tmp_path / "helper.log", "w"))

    def job(args, kill=None):
        helper.stdin.write(json.dumps({"args": args, "kill": kill}) + "\n")
        helper.stdin.flush()
        return json.loads(helper.stdout.readline())

    try:
        assert json.loads(helper.stdout.readline()) == {"ready": True}
        kills, last_epoch, history = 0, 0, []
        for kill in plan:  # each kill in a later epoch than the last: the run always gets there
            res = job(train_args(run, EPOCHS, *(["--resume"] if kills else [])), kill)
            epoch, logged = _checkpoint_epoch(run), _logged_epoch(run)
            history.append((kill, res, logged, epoch))
            assert res["killed"] and res["code"] == -9, (history, (tmp_path / "helper.log").read_text())
            kills += 1
            assert epoch >= last_epoch, f"the checkpoint went backwards: {history}"
            assert epoch >= logged - 1, f"lost more than one epoch: {history}"
            assert (epoch - kill["epoch"], logged - kill["epoch"]) == KILL_POINTS[kill["at"]], history
            last_epoch = epoch
        res = job(train_args(run, EPOCHS, "--resume"))
        assert res == {"killed": False, "at": "", "code": 0}, (history, (tmp_path / "helper.log").read_text())
    finally:
        helper.stdin.close()
        helper.wait(timeout=60)
    print(history)
    assert kills == len(plan) == EPOCHS and {k["at"] for k in plan} == set(KILL_POINTS), plan
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


@pytest.mark.slow
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(reference, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("id: run\n")  # what a run killed in epoch 1 leaves
    (run / "log.csv").write_text(",".join(LOG_FIELDS) + "\r\n")  # its header (a foreign one is refused)
    assert cli.main(train_args(run, EPOCHS, "--resume")) == 0
    assert metrics(run) == metrics(reference)
