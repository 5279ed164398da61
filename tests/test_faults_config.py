"""Config and command-line faults of issue 17: values never formatted whole into a message (D3),
bounded config reads (D6), Ctrl-C always reported as an interrupt (D8), the silent surprises
(duplicate YAML keys, repeated flags, `-c` twice, absurd counts, an empty or folder
`--checkpoint`, case-insensitive suggestions), and progress for long conversions.

Memory bombs run in a subprocess under ``resource.setrlimit(RLIMIT_AS)`` with a timeout, so that
a regression can never exhaust the machine; everything else runs the CLI in process.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml

from ann2snn import graph
from ann2snn.app import cli, config
from ann2snn.app.config import ConfigError, load_config, parse_config_text, parse_steps, read_config_file

from helpers import ROOT, TINY, assert_no_partial_run, assert_user_error, run_cli, small_transformer, write_yaml

SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "ANN2SNN_NO_TQDM": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(ROOT)}
MEMORY_LIMIT = 2 * 2**30  # importing torch and ann2snn takes about 0.7 GB of address space

pytestmark = pytest.mark.usefixtures("offline")


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A YAML list of ``levels`` anchored lists, each holding ``width`` aliases of the one before:
    under 400 bytes, loaded in microseconds (aliases share their object), but its repr has
    width**levels items (9**9: gigabytes)."""
    names = "abcdefghijklmnopqrstuvwxyz"[:levels]
    parts = [f"&a [{', '.join(['x'] * width)}]"]
    parts += [f"&{cur} [{', '.join([f'*{prev}'] * width)}]" for prev, cur in zip(names, names[1:])]
    return f"[{', '.join(parts)}]"


def run_limited(args: list, timeout: float = 90, stdin: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The CLI in a subprocess limited to MEMORY_LIMIT bytes of address space; (result, seconds)."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
        from ann2snn.app.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=SUB_ENV, capture_output=True, text=True,
                         timeout=timeout, input=stdin)
    return res, time.monotonic() - start


def assert_one_line_error(res: subprocess.CompletedProcess, command: str, *words: str) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "MemoryError" not in res.stderr, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(f"ann2snn {command}: error:")]
    assert len(lines) == 1, res.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ============================================================================ D3: bounded messages
@pytest.mark.slow
def test_alias_bomb_in_a_valid_key_ends_in_one_short_line(tmp_path):
    """`lr: <alias bomb>`: the error message once built the value's repr (3.6 GB, MemoryError)."""
    cfg = tmp_path / "bomb.yml"
    cfg.write_text(f"lr: {alias_bomb()}\nepochs: 1\n")
    assert cfg.stat().st_size < 1500
    res, seconds = run_limited(["train", "-c", cfg, "--out", tmp_path / "run", "--out_root", tmp_path])
    line = assert_one_line_error(res, "train", "lr must be a float", "(list)")
    assert len(line) < 300 and seconds < 60
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_alias_bomb_in_a_checkpoints_stored_config(tmp_path):
    """The same bomb inside a checkpoint's config (weights-only loading keeps shared lists shared)."""
    bomb = yaml.safe_load(alias_bomb())
    ckpt = tmp_path / "bomb.pt"
    torch.save({"format": 1, "config": {**TINY, "lr": bomb}, "model": {}}, ckpt)
    assert ckpt.stat().st_size < 100_000
    res, seconds = run_limited(["convert", "--checkpoint", ckpt, "--out", tmp_path / "out"])
    line = assert_one_line_error(res, "convert", "is invalid", "lr must be a float")
    assert len(line) < 400 and seconds < 60


def test_short_repr_is_bounded_and_never_builds_the_whole_repr():
    from ann2snn.app.config import short_repr

    bomb = yaml.safe_load(alias_bomb(levels=12))  # 9**12 leaves: no repr could ever finish
    huge_dict = {i: [i] * 3 for i in range(200_000)}
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    start = time.monotonic()
    for value, starts in [(bomb, "[['x', 'x'"), ("y" * 10**7, "'yyy"), (b"\0" * 10**7, "b'\\x00"),
                          (10**5000, "<an int of"), (huge_dict, "{0: [0, 0, 0], 1: [1, 1, 1]"), (deep, "[[[["),
                          (set(range(10**6)), "{0, 1, 2"), (object(), "<object>"), (0.5, "0.5"), (None, "None")]:
        text = short_repr(value)
        assert len(text) <= 80 and text.startswith(starts), text
    assert time.monotonic() - start < 2.0
    assert short_repr("abc") == "'abc'" and short_repr([1, "a"]) == "[1, 'a']" and short_repr({"k": 1}) == "{'k': 1}"
    assert len(short_repr(list(range(100)), limit=20)) <= 20


@pytest.mark.slow
def test_checkpoint_short_uses_the_bounded_repr():
    """checkpoint._short (which names a foreign checkpoint's entries) cut the repr only after
    building it whole: run under the memory limit, since on a regression it builds gigabytes."""
    code = textwrap.dedent(f"""
        import resource, yaml
        resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT}))
        from ann2snn.app.checkpoint import _short
        print(_short(yaml.safe_load({alias_bomb()!r})))
    """)
    res = subprocess.run([sys.executable, "-c", code], env=SUB_ENV, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    text = res.stdout.strip()
    assert len(text) < 100 and text.endswith("(list)"), text


def test_an_int_of_thousands_of_digits_is_a_config_error(capsys, tmp_path):
    """Python refuses to convert ints of over 4300 digits (ValueError inside the YAML loader)."""
    cfg = tmp_path / "big.yml"
    cfg.write_text("epochs: " + "9" * 5000 + "\n")
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out_root", tmp_path])
    line = assert_user_error(rc, err, "train", "holds a value YAML cannot read", "4300 digits")
    assert len(line) < 400
    rc, err = run_cli(capsys, ["train", "-c", write_yaml(tmp_path / "c.yml", TINY), "--out_root", tmp_path,
                               "--epochs", "9" * 100])
    line = assert_user_error(rc, err, "train", "epochs is far too large", "<an int of")
    assert len(line) < 300


# ============================================================================ D6: bounded reads
@pytest.mark.slow
@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_config_from_an_endless_device_is_refused(tmp_path, device):
    res, seconds = run_limited(["train", "-c", device, "--out_root", tmp_path])
    assert_one_line_error(res, "train", f"Config file '{device}' is larger than 256 KiB", "-c configs/digits.yml")
    assert seconds < 60


def test_a_config_file_over_the_limit_is_refused_naming_it(capsys, tmp_path):
    cfg = tmp_path / "huge.yml"
    cfg.write_text("# " + "x" * config.MAX_CONFIG_BYTES + "\nepochs: 1\n")
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out_root", tmp_path])
    assert_user_error(rc, err, "train", str(cfg), "larger than 256 KiB")
    ok = tmp_path / "ok.yml"  # just under the limit: read
    ok.write_text("# " + "x" * (config.MAX_CONFIG_BYTES - 100) + "\nepochs: 3\n")
    assert read_config_file(ok) == {"epochs": 3}


def test_a_pipe_is_still_read_once_and_whole():
    r, w = os.pipe()
    os.write(w, yaml.safe_dump(TINY).encode())
    os.close(w)
    try:
        assert read_config_file(f"/dev/fd/{r}") == TINY
    finally:
        os.close(r)


# ============================================================================ D8: Ctrl-C
def _interrupting_trace(then):
    """A Tracer.trace that receives a real SIGINT while it runs, swallows the KeyboardInterrupt
    (as a lazy import inside torch.fx can), then does ``then(self, root)``."""
    original = graph.Tracer.trace

    def trace(self, root, *args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)  # the handler raises at once
        except KeyboardInterrupt:
            pass
        return then(original, self, root, *args, **kwargs)

    return trace


@pytest.fixture
def terminal_sigint():
    """Ctrl-C as in a terminal: a suite started in the background (``pytest &``) inherits SIGINT
    ignored, which ``main`` rightly respects (it installs its handler only where SIGINT is not
    ignored), and these tests would then see no interrupt at all."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _half_imported(original, self, root, *args, **kwargs):
    raise AttributeError("module 'sympy' has no attribute 'printing'")  # what a half-imported sympy gives


def _carry_on(original, self, root, *args, **kwargs):
    return original(self, root, *args, **kwargs)


@pytest.mark.parametrize("then", [_half_imported, _carry_on], ids=["turned-into-an-error", "swallowed"])
def test_ctrl_c_during_tracing_is_reported_as_an_interrupt(capsys, monkeypatch, tmp_path, then, terminal_sigint):
    """D8: an interrupt inside torch.fx tracing was reported as "torch.fx cannot trace
    Transformer: AttributeError: module 'sympy' …" (exit 2), or, swallowed, the run went on and
    finished (exit 0)."""
    monkeypatch.setattr(graph.Tracer, "trace", _interrupting_trace(then))
    before = signal.getsignal(signal.SIGINT)
    cfg = write_yaml(tmp_path / "tiny.yml", TINY)
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out", tmp_path / "run", "--out_root", tmp_path])
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "cannot trace" not in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) is before  # main restores the handler it replaced
    assert_no_partial_run(tmp_path)
    from ann2snn.progress import interrupted, progress

    assert not interrupted() and list(progress([1, 2])) == [1, 2]  # the record ends with main


def test_an_error_raised_while_an_interrupt_unwinds_is_not_a_model_error():
    class CleanupFails(torch.nn.Module):
        def forward(self, x):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("cleanup failed") from None  # the context is still the interrupt

    with pytest.raises(KeyboardInterrupt):
        graph.trace(CleanupFails())


def test_progress_raises_an_interrupt_that_was_swallowed():
    from ann2snn.progress import note_interrupt, progress

    note_interrupt()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(progress(range(3)))
    finally:
        note_interrupt(False)
    assert list(progress(range(3))) == [0, 1, 2]


FORKED_TRAIN = """
import json, os, signal, sys, time
from ann2snn.app import cli  # imported once: each child starts main with torch loaded, sympy not yet
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see terminal_sigint)
cfg, root = sys.argv[1], sys.argv[2]
for delay in map(float, sys.argv[3].split(",")):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 2)
        rc = cli.main(["train", "-c", cfg, "--out", f"{root}/run{delay}", "--out_root", root])
        sys.stderr.flush()
        os._exit(rc)
    os.close(w)
    time.sleep(delay)
    os.kill(pid, signal.SIGINT)
    with os.fdopen(r) as f:
        err = f.read()
    print(json.dumps([delay, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err]), flush=True)
"""


@pytest.mark.slow
def test_sigint_at_several_moments_of_train_is_always_an_interrupt(tmp_path):
    """A real SIGINT at several delays after main starts (tracing, which imports sympy lazily,
    takes seconds of them): always `interrupted`, exit 130, never a model error."""
    cfg = write_yaml(tmp_path / "tiny.yml", TINY)
    res = subprocess.run([sys.executable, "-c", FORKED_TRAIN, str(cfg), str(tmp_path), "0.2,1.2,2.4"], env=SUB_ENV,
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("[")]
    assert len(runs) == 3, res.stdout
    for delay, rc, err in runs:
        assert "cannot trace" not in err and "Traceback" not in err, (delay, err)
        interrupted = rc == 130 and err.strip().splitlines()[-1] == "interrupted"
        assert interrupted or (rc == 0 and delay > 1), (delay, rc, err)  # (or it had finished first)
    assert runs[0][1] == 130


# ============================================================================ silent surprises
def test_a_key_set_twice_in_a_config_file_is_refused(capsys, tmp_path):
    cfg = tmp_path / "dup.yml"
    cfg.write_text("lr: 0.1\nepochs: 1\nlr: 0.2\n")
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out_root", tmp_path])
    assert_user_error(rc, err, "train", str(cfg), "sets 'lr' twice", "lines 1 and 3", "Delete one")
    with pytest.raises(ConfigError, match="sets 'b' twice \\(lines 2 and 3\\)"):
        parse_config_text("a:\n  b: 1\n  b: 2\n", "nested.yml")
    # a merge key may still be overridden by the mapping's own key, as YAML intends
    assert parse_config_text("<<: {lr: 0.1, epochs: 2}\nlr: 0.2\n", "m.yml") == {"lr": 0.2, "epochs": 2}


def test_the_duplicate_checking_loader_still_refuses_python_tags(tmp_path):
    marker = tmp_path / "ran"
    for text in [f"lr: !!python/object/apply:os.system ['touch {marker}']\n",
                 f"!!python/object/apply:os.system ['touch {marker}']\n",
                 "lr: !!python/name:os.system\n"]:
        with pytest.raises(ConfigError, match="not valid YAML"):
            parse_config_text(text, "evil.yml")
    assert not marker.exists()


@pytest.mark.parametrize("argv,words", [
    (["convert", "--lr", "0.1", "--lr", "0.2"], ["lr is given twice", "--lr '0.1' and --lr '0.2'"]),
    (["convert", "--extra-t", "1", "--extra_t=2"], ["extra_t is given twice", "--extra-t '1' and --extra_t '2'"]),
    (["table", "--t", "1-4", "--t", "1-8"], ["--t is given twice", "'1-4'", "'1-8'"]),
    (["table", "--extra-t", "0-4", "--extra_t", "2"], ["extra_t is given twice", "--extra-t '0-4'", "--extra_t '2'"]),
    (["convert", "--checkpoint", "a.pt", "--checkpoint=b.pt"], ["--checkpoint is given twice", "'a.pt'", "'b.pt'"]),
    (["convert", "--json", "a.json", "--json=b.json"], ["--json is given twice", "'a.json'", "'b.json'"]),
    (["energy", "--constants", "fp16", "--constants", "1,2"], ["--constants is given twice", "'fp16'", "custom 1/2"]),
])
def test_an_option_given_twice_is_refused_naming_both_values(capsys, tmp_path, argv, words):
    rc, err = run_cli(capsys, [*argv, "--out_root", tmp_path])
    assert_user_error(rc, err, argv[0], *words)


def test_a_config_key_that_begins_an_option_name_is_not_taken_for_that_option(capsys, tmp_path):
    """argparse's abbreviations took `convert --l 8` for --latency-extra 8: the QCFS levels the
    user asked for were silently not set.  Now --l is the config key l."""
    cfg = write_yaml(tmp_path / "tiny.yml", TINY)
    rc, err = run_cli(capsys, ["convert", "-c", cfg, "--out_root", tmp_path, "--l", "0"])
    assert_user_error(rc, err, "convert", "l (QCFS levels) must be >= 1")
    rc, err = run_cli(capsys, ["convert", "--out_root", tmp_path, "--check", "x.pt"])
    assert_user_error(rc, err, "convert", "Unknown option '--check': did you mean --checkpoint?")
    rc, err = run_cli(capsys, ["convert", "--out_root", tmp_path, "--out_roo", "x"])  # a key's typo: the key
    assert_user_error(rc, err, "convert", "Unknown config key 'out_roo'", "Did you mean out_root")


def test_config_given_twice_is_refused_naming_both_files(capsys, tmp_path):
    a, b = write_yaml(tmp_path / "a.yml", TINY), write_yaml(tmp_path / "b.yml", {**TINY, "lr": 0.5})
    for argv in (["-c", a, "-c", b], ["-c", a, "--config", b], [f"--config={a}", "-c", b]):
        rc, err = run_cli(capsys, ["train", *argv, "--out_root", tmp_path])
        assert_user_error(rc, err, "train", "-c/--config is given twice", f"'{a}'", f"'{b}'",
                          "only one config file is read")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yml", "b.yml"]


@pytest.mark.parametrize("key,value,words", [
    ("epochs", "1e20", ["epochs must be at most 100000", "100000000000000000000"]),
    ("bs", "1000000", ["bs (batch size) must be at most 65536"]),
    ("eval_bs", "1e9", ["eval_bs must be at most 65536"]),
    ("workers", "100000", ["workers must be at most 512"]),
    ("depth", "1e6", ["depth must be at most 1024"]),
    ("calibrate_batches", "1e12", ["calibrate_batches must be at most 100000"]),
    ("warmup_epochs", "5", ["warmup_epochs (5) must be at most epochs (1)"]),
    ("l", "1e9", ["l (QCFS levels) must be at most 4096"]),
    ("cutout", "1e9", ["cutout (hole size in px) must be at most 1024"]),
])
def test_absurd_counts_are_refused_with_their_bound(capsys, tmp_path, key, value, words):
    """Through `convert`, which finds no checkpoint here: without the bound it fails fast on that
    instead of training for 1e20 epochs or building a million blocks."""
    cfg = write_yaml(tmp_path / "tiny.yml", TINY)
    rc, err = run_cli(capsys, ["convert", "-c", cfg, "--out_root", tmp_path, f"--{key}", value])
    assert_user_error(rc, err, "convert", *words)
    with pytest.raises(ConfigError, match=words[0].replace("(", "\\(").replace(")", "\\)")):
        load_config(None, {**TINY, key: value})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yml"]


def test_bounds_keep_the_shipped_configs_valid():
    for path in sorted((ROOT / "configs").glob("*.yml")):
        load_config(path)
    load_config(None, {"epochs": 100_000, "bs": 65_536, "eval_bs": 65_536, "workers": 512, "warmup_epochs": 100_000})


def test_an_empty_checkpoint_is_refused(capsys, tmp_path):
    cfg, test_cfg = write_yaml(tmp_path / "c.yml", TINY), write_yaml(tmp_path / "t.yml", {**TINY, "action": "test"})
    for argv in (["convert", "--checkpoint", ""], ["table", "--checkpoint=", "-c", cfg],
                 ["run", "-c", test_cfg, "--checkpoint", " "]):
        rc, err = run_cli(capsys, [*argv, "--out_root", tmp_path])
        assert_user_error(rc, err, argv[0], "--checkpoint is empty; pass a file or omit it")


def test_a_checkpoint_folder_is_named_as_a_folder(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rc, err = run_cli(capsys, ["convert", "--checkpoint", run])
    assert_user_error(rc, err, "convert", f"--checkpoint '{run}' is a folder, not a checkpoint file",
                      "e.g. a run's best_model.pt")
    assert "does not exist" not in err
    (run / "best_model.pt").write_bytes(b"not read")
    rc, err = run_cli(capsys, ["table", "--checkpoint", run])
    assert_user_error(rc, err, "table", "is a folder", f"did you mean `--checkpoint {run / 'best_model.pt'}`?")
    cfg = write_yaml(tmp_path / "c.yml", {**TINY, "model_path": str(run)})
    rc, err = run_cli(capsys, ["convert", "-c", cfg])
    assert_user_error(rc, err, "convert", f"model_path '{run}' is a folder")


def test_suggestions_ignore_case(capsys, tmp_path):
    cfg = tmp_path / "upper.yml"
    cfg.write_text(yaml.safe_dump(TINY) + "LR: 0.1\n")
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "Unknown config key 'LR'", "Did you mean lr", "keys are lower case")
    rc, err = run_cli(capsys, ["train", "-c", write_yaml(tmp_path / "t.yml", TINY), "--out_root", tmp_path,
                               "--model", "Transformer"])
    assert_user_error(rc, err, "train", "Unknown model 'Transformer'", "Did you mean transformer")
    from ann2snn.models import unknown_model_message

    assert "Did you mean torchvision:resnet18" in unknown_model_message("TorchVision:ResNet18")
    assert "Did you mean torchvision:resnet18" in unknown_model_message("torchvisio:resnet18")
    assert len(unknown_model_message("m" * 100_000)) < 400


def test_config_messages_never_hold_a_long_value_whole():
    long = "x" * 100_000
    for overrides in ({"optimizer": long}, {"device": long}, {"id": "a/" + long}, {"attn": long}, {"lr": [long]},
                      {long: 1}):
        with pytest.raises(ConfigError) as info:
            load_config(None, overrides)
        assert len(str(info.value)) < 1500, str(info.value)[:200]
    with pytest.raises(ConfigError) as info:
        cli.parse_overrides(["--t", "1", long])
    assert len(str(info.value)) < 300
    with pytest.raises(ConfigError) as info:
        parse_steps(long, "--t", 1)
    assert len(str(info.value)) < 300


def test_one_step_parser_for_every_command():
    """Every `--t` / `--extra-t` / `--spike-levels` and the config's t / extra_t are read by one
    parser: numbers, ranges, lists and the L symbols, bounded before a range is expanded."""
    assert parse_steps("8", "--t") == [8] and parse_steps(8, "--t") == [8]
    assert parse_steps("1-8,12,16", "--t") == [1, 2, 3, 4, 5, 6, 7, 8, 12, 16]
    assert parse_steps("1-2L", "--t", 1, L=4) == list(range(1, 9))
    assert parse_steps("0-L", "--extra-t", 0, L=4) == [0, 1, 2, 3, 4]
    assert parse_steps("1,L/2,l", "spike levels", 1, L=4) == [1, 2, 4]
    for text, words in [("4-2", "is empty"), ("L", "symbol L"), ("0", "--t must be >= 1"),
                        ("1-5000", "at most 4096"), ("x", "--t must be whole numbers")]:
        with pytest.raises(ConfigError, match=words):
            parse_steps(text, "--t", 1)
    cfg = load_config(None, {"l": 4, "t": "2L", "extra_t": "L/2"})
    assert (cfg.t, cfg.extra_t) == (8, 2)
    with pytest.raises(ConfigError, match="t is one number of steps"):
        load_config(None, {"t": "1-2L"})


def test_renamed_options_keep_their_old_spellings():
    parser = cli.build_parser()
    for flag in ("--spike-levels", "--spike_levels", "--levels"):
        assert parser.parse_args(["frontier", flag, "1,L"]).spike_levels == "1,L"
    for command in ("table", "frontier"):
        for flag in ("--extra-t", "--extra_t"):
            assert parser.parse_args([command, flag, "0-2"]).extra_t == "0-2"


# ============================================================================ progress
def test_a_long_k_step_evaluation_logs_its_size_and_progress(caplog, monkeypatch):
    """`convert --t 1000` under exact runs 500 500 steps a batch: said up front, then progress per
    k-step run.  Here the threshold is lowered so that t = 4, extra_t = 1 (5 + 2 + 3 + 4 = 14 steps) counts as long."""
    import ann2snn
    from ann2snn import metrics

    monkeypatch.setenv("ANN2SNN_NO_TQDM", "1")
    model = small_transformer()
    sim = ann2snn.Simulator(ann2snn.convert(model, "exact"))
    torch.manual_seed(0)
    loader = [(torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])), (torch.rand(2, 1, 8, 8), torch.tensor([3, 4]))]
    quiet = metrics.evaluate(sim, loader, 4, 1)
    assert not [r for r in caplog.records if "steps per batch" in r.getMessage()]
    monkeypatch.setattr(metrics, "LONG_RUN_STEPS", 9)
    monkeypatch.setattr(metrics, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="ann2snn"):
        loud = metrics.evaluate(sim, loader, 4, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("SNN t=4+1: 14 simulation steps per batch" in m for m in messages), messages  # 5 + 2 + 3 + 4
    assert any("SNN t=4+1 batch 1: 1/3 k-step runs" in m for m in messages), messages
    assert any("SNN t=4+1 batch 2: 3/3 k-step runs" in m for m in messages), messages
    assert loud == quiet  # progress between the runs changes no figure


def test_grouped_k_step_runs_give_the_same_figures_when_rows_share_a_trunk(monkeypatch):
    """Under `rate` the k-step runs share one trunk pass (one call, not one per row)."""
    import ann2snn
    from ann2snn import metrics

    sim = ann2snn.Simulator(ann2snn.convert(small_transformer(), "rate"))
    assert metrics._k_step_groups(sim, 5) == [[1, 2, 3, 4]]
    exact = ann2snn.Simulator(ann2snn.convert(small_transformer(), "exact"))
    assert metrics._k_step_groups(exact, 4) == [[1], [2], [3]]
    loader = [(torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2]))]
    quiet = metrics.evaluate(sim, loader, 5, 2)
    monkeypatch.setattr(metrics, "LONG_RUN_STEPS", 1)
    assert metrics.evaluate(sim, loader, 5, 2) == quiet
