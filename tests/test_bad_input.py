"""Bad input gets a one-paragraph error that names the problem and the fix, exit status 2, no
traceback, and no half-made run directory that a later ``convert`` would pick up.

The named cases of the issue are tested one by one; then a hypothesis test feeds 500 generated
config files and argument lists to the CLI (in-process), asserts that every one either runs or
fails that way, and counts that all 500 ran.  Downloads are switched off (as on an offline
machine), so a missing dataset is always a DataError and never a 170 MB download.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ann2snn.app import commands
from ann2snn.app.config import FIELD_NAMES, WIDTH_MODELS, Config
from ann2snn.presets import PRESETS
from ann2snn.models import list_models

from helpers import ROOT, TINY, assert_no_partial_run, assert_user_error, run_cli, write_yaml

DIGITS = str(ROOT / "configs" / "digits.yml")
pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def checkpoints(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """The shared tiny run's checkpoint and broken relatives of it."""
    base = tmp_path_factory.mktemp("ckpts")
    good = tiny_run["best"]
    blob = good.read_bytes()
    (base / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    torch.save({"weights": torch.zeros(3)}, base / "foreign.pt")
    torch.save(torch.nn.Linear(2, 2), base / "pickled_module.pt")  # needs unpickling: refused
    (base / "garbage.pt").write_bytes(os.urandom(256))
    paths = {"good": good, "truncated": base / "truncated.pt", "foreign": base / "foreign.pt",
             "module": base / "pickled_module.pt", "garbage": base / "garbage.pt", "tiny_cfg": tiny_run["cfg"]}
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    for kind, change in FOREIGN_CHANGES.items():  # an ann2snn checkpoint with one field replaced
        torch.save({**ckpt, **change}, base / f"{kind}.pt")
        paths[kind] = base / f"{kind}.pt"
    return paths


# Checkpoints that look like ours at first sight (they have 'model' and 'config') but are not.
FOREIGN_CHANGES = {
    "config_list": {"config": [1, 2]},  # config present, but not a dict
    "config_str": {"config": "dim: 16"},
    "format_str": {"format": "1"},  # format not a number
    "format_none": {"format": None},
    "model_tensor": {"model": torch.zeros(3)},  # model a tensor, not a state dict
    "model_entries": {"model": {"head.weight": [1.0, 2.0]}},  # a dict, but not of tensors
    "unknown_config": {"config": {"channels": 16, "layers": 2}},  # none of our keys: not silently defaults
    "empty_config": {"config": {}},
}


# ----------------------------------------------------------------------------- named cases
@pytest.mark.parametrize("extra,words", [
    (["--epoch", "3"], ["Unknown config key 'epoch'", "Did you mean epochs"]),
    (["--t", "-1"], ["t (time steps) must be >= 1", "--t 8"]),
    (["--l", "0"], ["l (QCFS levels) must be >= 1"]),
    (["--dim", "64", "--num_heads", "5"], ["divisible by num_heads", "Pick num_heads among"]),
    (["--bs", "abc"], ["bs must be an int", "'abc'"]),
    (["--bs", "null"], ["bs cannot be null; it needs an int"]),
    (["--mlp_ratio", "1e-300"], ["mlp_ratio 1e-300 is too small for dim 64", "hidden size", "--mlp_ratio 4"]),
    (["--dim", "16", "--num_heads", "2", "--mlp_ratio", "0.05"], ["too small for dim 16", "int(0.8) is 0"]),
    (["--model", "spikformer", "--mlp_ratio", "0.01"], ["mlp_ratio 0.01 is too small"]),
    (["--model", "sdt", "--mlp_ratio", "0.01"], ["mlp_ratio 0.01 is too small"]),
    (["--mlp_ratio", "1e300"], ["mlp_ratio 1e+300 is too large for dim 64", "--mlp_ratio 4"]),
    (["--dim", str(2**30), "--num_heads", "4"], ["dim must be at most"]),
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


@pytest.mark.parametrize("model", [m for m in list_models() if ":" not in m and m not in WIDTH_MODELS])  # CNNs: no MLP
def test_mlp_ratio_is_checked_against_the_hidden_size_the_models_build(model):
    """validate() accepts an mlp_ratio exactly when int(dim * mlp_ratio) >= 1, the MLP width every
    model builds; the smallest accepted one trains a step (no zero-width layer)."""
    from ann2snn.app.config import ConfigError
    from ann2snn.app.data import DataInfo
    from ann2snn.app.train import build_model

    for ratio in (1 / 16 * (1 - 1e-9), 1e-300):
        with pytest.raises(ConfigError, match="too small for dim 16"):
            Config(dim=16, num_heads=2, depth=1, mlp_ratio=ratio, model=model).validate()
    cfg = Config(dim=16, num_heads=2, depth=1, mlp_ratio=1 / 16, model=model, t=1, l=2).validate()
    text = model == "gpt"  # the language model reads token windows
    info = DataInfo("python_docs", 256, 1, 0, (), (), context=8) if text else DataInfo("digits", 10, 1, 8, (0.0,), (1.0,))
    net = build_model(cfg, info)
    widths = {m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)}
    widths |= {m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv1d)}
    assert 1 in widths  # the MLP's hidden layer, one unit wide
    net(torch.randint(0, 256, (2, 8)) if text else torch.rand(2, 1, 8, 8)).sum().backward()


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
                                        ("module", ["cannot be read", "Unsupported global", "Linear"]),
                                        ("foreign", ["not an ann2snn checkpoint"]),
                                        ("config_list", ["not an ann2snn checkpoint", "'config' is [1, 2]"]),
                                        ("config_str", ["not an ann2snn checkpoint", "'config' is 'dim: 16'"]),
                                        ("format_str", ["not an ann2snn checkpoint", "'format' is '1'"]),
                                        ("format_none", ["not an ann2snn checkpoint", "'format' is None"]),
                                        ("model_tensor", ["not an ann2snn checkpoint", "a tensor of shape [3]"]),
                                        ("model_entries", ["not an ann2snn checkpoint", "'head.weight'"]),
                                        ("unknown_config", ["not an ann2snn checkpoint", "none of ann2snn's config",
                                                            "'channels'"]),
                                        ("empty_config", ["not an ann2snn checkpoint", "it is empty"])])
@pytest.mark.parametrize("command", ["convert", "table"])
def test_unusable_checkpoints(capsys, checkpoints, tmp_path, kind, words, command):
    rc, err = run_cli(capsys, [command, "--checkpoint", checkpoints[kind], "--out", tmp_path / "o"])
    line = assert_user_error(rc, err, command, *words)
    assert "\x1b" not in line and "\t" not in line, repr(line)  # no terminal escapes from torch's text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["model_tensor", "model_entries", "config_list", "unknown_config", "format_str"])
def test_foreign_checkpoints_with_a_config_file_or_inherit(capsys, checkpoints, tmp_path, kind):
    """The same files reached the other ways: -c CONFIG --checkpoint, and `inherit: true`."""
    rc, err = run_cli(capsys, ["convert", "-c", checkpoints["tiny_cfg"], "--checkpoint", checkpoints[kind],
                               "--out", tmp_path / "o"])
    assert_user_error(rc, err, "convert", "not an ann2snn checkpoint")
    rc, err = run_cli(capsys, ["train", "-c", checkpoints["tiny_cfg"], "--inherit", "true", "--model_path",
                               checkpoints[kind], "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "not an ann2snn checkpoint")
    assert_no_partial_run(tmp_path)


@pytest.mark.parametrize("change,words", [({"epoch": "three"}, ["cannot be resumed from", "ValueError"]),
                                          ({"optimizer": {"state": 1}}, ["cannot be resumed from"]),
                                          ({"scheduler": [1]}, ["cannot be resumed from"])])
def test_resume_from_a_last_checkpoint_with_a_broken_training_state(capsys, checkpoints, tmp_path, change, words):
    run = tmp_path / "run"
    run.mkdir()
    last = torch.load(checkpoints["good"].parent / "last.pt", map_location="cpu", weights_only=True)
    torch.save({**last, **change}, run / "last.pt")
    rc, err = run_cli(capsys, ["train", "-c", checkpoints["tiny_cfg"], "--out", run, "--out_root", tmp_path,
                               "--resume"])
    assert_user_error(rc, err, "train", *words, "without --resume")


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


def _record_saves(monkeypatch) -> list[tuple[str, int]]:
    """(file name, epoch) of every checkpoint training writes; each must hold finite weights."""
    import ann2snn.app.train as train_mod

    saves, real = [], train_mod.atomic_save

    def recording(obj, path):
        assert all(bool(torch.isfinite(v).all()) for v in obj["model"].values() if v.is_floating_point()), path
        saves.append((Path(path).name, obj["epoch"]))
        real(obj, path)

    monkeypatch.setattr(train_mod, "atomic_save", recording)
    return saves


def _poison_eval(monkeypatch, epoch: int, how: str) -> None:
    """Make the test evaluation of ``epoch`` (counted in this process) come out non-finite:
    its loss NaN or inf, or (``weights``) a weight inf while the loss is still finite."""
    import ann2snn.app.train as train_mod

    real, calls = train_mod.evaluate_ann, []

    def poisoned(model, *a, **k):
        calls.append(1)
        ev = real(model, *a, **k)
        if len(calls) == epoch:
            if how == "weights":
                with torch.no_grad():
                    model.head.bias[0] = float("inf")
            else:
                ev = dataclasses.replace(ev, loss=float(how))
        return ev

    monkeypatch.setattr(train_mod, "evaluate_ann", poisoned)


@pytest.mark.parametrize("before", ["no LATEST", "LATEST of another run"])
def test_nan_loss_in_a_later_epoch_removes_the_run_and_restores_latest(capsys, checkpoints, tmp_path,
                                                                       monkeypatch, before):
    """lr 3e6: epoch 1 has a huge but finite training and test loss and is saved (best_model.pt,
    last.pt, LATEST); the training loss of epoch 2 is NaN.  The run was new, so it is removed
    and LATEST is put back; a later `convert` finds the run LATEST named before, or none."""
    other = checkpoints["good"].parent
    if before != "no LATEST":
        (tmp_path / "LATEST").write_text(f"{other.resolve()}\n")
    saves = _record_saves(monkeypatch)
    rc, err = run_cli(capsys, ["train", "-c", checkpoints["tiny_cfg"], "--lr", "3e6", "--epochs", "3",
                               "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "training loss became nan in epoch 2", "--lr 1e-3", "--use_amp false",
                      "Nothing of this run is kept")
    assert ("best_model.pt", 1) in saves and ("last.pt", 1) in saves  # epoch 1 had been saved ...
    assert not any(epoch >= 2 for _, epoch in saves)
    assert not (tmp_path / "run").exists()  # ... and is gone with the run
    assert_no_partial_run(tmp_path)
    if before == "no LATEST":
        assert not (tmp_path / "LATEST").exists()
        rc, err = run_cli(capsys, ["convert", "--out_root", tmp_path])
        assert_user_error(rc, err, "convert", "No trained run found")
    else:
        assert commands.latest_run(str(tmp_path)) == other.resolve()


@pytest.mark.parametrize("how,words", [("nan", ["test loss became nan after epoch 2"]),
                                       ("inf", ["test loss became inf after epoch 2"]),
                                       ("weights", ["head.bias became non-finite in epoch 2"])])
def test_non_finite_test_loss_or_weights_in_a_later_epoch(capsys, checkpoints, tmp_path, monkeypatch, how, words):
    """The test loss (and the weights) are checked every epoch before anything is saved."""
    saves = _record_saves(monkeypatch)
    _poison_eval(monkeypatch, 2, how)
    rc, err = run_cli(capsys, ["train", "-c", checkpoints["tiny_cfg"], "--epochs", "3", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", *words, "--lr 1e-3", "Nothing of this run is kept")
    assert saves == [("last.pt", 1), ("best_model.pt", 1)]  # an epoch writes last.pt first
    assert not (tmp_path / "run").exists() and not (tmp_path / "LATEST").exists()
    assert_no_partial_run(tmp_path)


def test_nan_in_a_resumed_run_keeps_its_checkpoints(capsys, checkpoints, tmp_path, monkeypatch):
    """A --resume of a run with good checkpoints: they are kept (the ones of this invocation's
    finite epochs too), nothing of the NaN epoch is written, and LATEST still names the run's
    finite best_model.pt."""
    import ann2snn.app.train as train_mod

    run, args = tmp_path / "run", ["train", "-c", checkpoints["tiny_cfg"], "--epochs", "3", "--out_root", tmp_path]
    real = train_mod.evaluate_ann

    def interrupted(*a, **k):  # Ctrl-C in epoch 2 of the first invocation
        if interrupted.calls == 1:
            raise KeyboardInterrupt
        interrupted.calls += 1
        return real(*a, **k)

    interrupted.calls = 0
    monkeypatch.setattr(train_mod, "evaluate_ann", interrupted)
    rc, _ = run_cli(capsys, args)
    assert rc == 130 and torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(train_mod, "evaluate_ann", real)
    saves = _record_saves(monkeypatch)
    _poison_eval(monkeypatch, 2, "nan")  # the resumed run's 2nd epoch: epoch 3
    rc, err = run_cli(capsys, [*args, "--resume"])
    assert_user_error(rc, err, "train", "test loss became nan after epoch 3", "are kept", "--inherit true",
                      "without --resume")
    assert [epoch for _, epoch in saves] == [2] * len(saves) and ("last.pt", 2) in saves
    last = torch.load(run / "last.pt", weights_only=True)
    best = torch.load(run / "best_model.pt", weights_only=True)
    assert last["epoch"] == 2 and best["epoch"] in (1, 2)
    assert all(bool(torch.isfinite(v).all()) for c in (last, best) for v in c["model"].values()
               if v.is_floating_point())
    assert [ln.split(",")[0] for ln in (run / "log.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert commands.latest_run(str(tmp_path)) == run.resolve()
    assert_no_partial_run(tmp_path)


def test_a_diverged_run_in_a_users_folder_loses_only_what_it_wrote(tmp_path):
    """rundir level: `--out` at a folder of the user's.  The checkpoints this run wrote go, the
    user's files stay (and, as for any failed run there, config.yaml/log.csv), LATEST goes back;
    a run that had checkpoints before keeps them."""
    from ann2snn.app import rundir

    class Diverged(Exception):
        pass

    mine, old_run, resumed = tmp_path / "mine", tmp_path / "old", tmp_path / "resumed"
    for d in (mine, old_run, resumed):
        d.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (old_run / "best_model.pt").write_bytes(b"old")
    (resumed / "last.pt").write_bytes(b"epoch 1")
    latest = tmp_path / "LATEST"
    for d in (mine, resumed):
        latest.write_text(f"{old_run.resolve()}\n")
        with pytest.raises(Diverged), rundir.cleanup_on_failure(discard_on=(Diverged,)):
            rundir.claim(d, tmp_path)  # tmp_path: the out_root holding LATEST
            for name in ("config.yaml", "log.csv", "best_model.pt", "last.pt"):
                (d / name).write_text("x")
            latest.write_text(f"{d.resolve()}\n")  # what write_latest does after an improved epoch
            raise Diverged
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "log.csv", "notes.txt"]
    assert (resumed / "last.pt").is_file() and (resumed / "best_model.pt").is_file()
    assert Path(latest.read_text().strip()) == resumed.resolve()  # the resumed run keeps LATEST
    with pytest.raises(Diverged), rundir.cleanup_on_failure(discard_on=(Diverged,)):  # a new run
        rundir.claim(tmp_path / "new", tmp_path)
        (tmp_path / "new" / "best_model.pt").write_text("x")
        latest.write_text(f"{(tmp_path / 'new').resolve()}\n")
        raise Diverged
    assert not (tmp_path / "new").exists() and Path(latest.read_text().strip()) == resumed.resolve()
    shutil.rmtree(resumed)  # LATEST's run before is gone: LATEST is removed, not pointed at nothing
    with pytest.raises(Diverged), rundir.cleanup_on_failure(discard_on=(Diverged,)):
        rundir.claim(tmp_path / "new", tmp_path)
        (tmp_path / "new" / "best_model.pt").write_text("x")
        latest.write_text(f"{(tmp_path / 'new').resolve()}\n")
        raise Diverged
    assert not (tmp_path / "new").exists() and not latest.exists()


@pytest.mark.slow
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
    "attn": st.sampled_from(["softmax", "query_softmax", "ssa", "linear"]), "id": DIGITLESS,
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
        ckpt = draw(st.sampled_from(["good"] * 4 + ["truncated", "foreign", "module", "garbage", "missing", None,
                                                     *FOREIGN_CHANGES]))
        rows = draw(st.one_of(st.sampled_from(["1-3", "2", "1,3", "2-3"]),
                              st.sampled_from(["3-1", "0", "-2", "1-x", "", "1--2"]), DIGITLESS))
        extras = draw(st.sampled_from(["0-2", "0", "1", "0-1", "-1", "2-0", "x"]))
    return command, config, values, draw(st.text(max_size=30)), args, ckpt, rows, extras


_counter = itertools.count()


@pytest.fixture
def fast_plots(monkeypatch):
    """Plots are drawn but not rasterized to PNG (1-2 s per convert on a loaded 2-core box)."""
    from ann2snn.app import plots

    monkeypatch.setattr(plots, "_save", lambda fig, path: Path(path))


FUZZ_EXAMPLES = 500


@pytest.mark.slow
def test_fuzzed_configs_and_arguments_run_or_fail_cleanly(capsys, checkpoints, tmp_path_factory, fast_plots):
    """FUZZ_EXAMPLES generated cases, each run through the CLI; and they really all ran: hypothesis
    stops early when it exhausts the search space or gives up on too many invalid or oversized
    draws, so the cases that ran are counted."""
    ran: list[str] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much])
    @given(case=cli_case())
    def fuzz(case):
        ran.append(_run_case(case, capsys, checkpoints, tmp_path_factory))

    fuzz()
    outcomes = {k: sum(1 for r in ran if r == k) for k in sorted(set(ran))}
    print(f"fuzz: {len(ran)} cases, {outcomes}")
    assert len(ran) >= FUZZ_EXAMPLES, (len(ran), outcomes)
    # not vacuous: every command both ran and failed cleanly (each outcome is drawn dozens of times)
    assert set(outcomes) == {f"{c}: {o}" for c in ("train", "convert", "table", "run")
                             for o in ("ran", "user error")}, outcomes


def _run_case(case, capsys, checkpoints, tmp_path_factory) -> str:
    """Run one generated case; returns '<command>: ran' or '<command>: user error'."""
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
    outcome = f"{command}: {'ran' if rc == 0 else 'user error'}"
    event(outcome)  # pytest --hypothesis-show-statistics
    if rc == 0:
        return outcome
    assert rc == 2, (argv, err)
    lines = [ln for ln in err.splitlines() if f": error: " in ln and ln.startswith("ann2snn")]
    assert len(lines) == 1 and len(lines[0]) > len(f"ann2snn {command}: error: ") + 10, (argv, err)
    assert "\x1b" not in lines[0], (argv, err)
    assert_no_partial_run(work / "runs")
    assert_no_partial_run(work / "out")
    return outcome
