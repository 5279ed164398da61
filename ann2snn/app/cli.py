"""Command line: ``ann2snn {train,convert,table,run} …``.

Every config key can be overridden as ``--key value`` (dashes or underscores).  User mistakes
(bad keys or values, missing data, unusable checkpoints) print one paragraph and exit with status
2, without a traceback.
"""
from __future__ import annotations

import argparse
import difflib
import errno
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from ann2snn.app.config import (FIELD_NAMES, MAX_STEPS, Config, ConfigError, load_config, read_config_file,
                            short_repr, unknown_key_message)
from ann2snn.progress import interrupted, note_interrupt

log = logging.getLogger("ann2snn")


class OutputError(ConfigError):
    """An output path that cannot be written: a file where a folder is needed (or the reverse), a
    folder this process cannot write to, a name too long for the filesystem, a full disk.  Found
    by :func:`preflight_outputs` before any work, so no hour of evaluation is lost to it."""


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


# --------------------------------------------------------------------------------------------
# argument helpers
def parse_overrides(rest: list[str], options: tuple[str, ...] = ()) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs → {key: raw string}; keys must be config keys, each
    given once (a repeat, also spelt ``--extra-t`` then ``--extra_t``, is refused: the last one
    would win without a word).  ``options``: the command's own options, suggested for an unknown
    key that begins or resembles one (options are not abbreviated: ``--check`` is not
    ``--checkpoint``)."""
    out: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"Unexpected argument {short_repr(tok)}. Config overrides look like `--key value`.")
        key, eq, value = tok[2:].partition("=")
        flag, key = f"--{key}", key.replace("-", "_")
        if key not in FIELD_NAMES:
            raise _unknown_override(flag, key, options)
        if not eq:
            if i + 1 >= len(rest) or (rest[i + 1].startswith("--") and len(rest[i + 1]) > 2):
                raise ConfigError(f"--{key} needs a value, e.g. `--{key} {getattr(Config(), key)}`.")
            value = rest[i + 1]
            i += 1
        if key in out:
            raise ConfigError(f"{key} is given twice: {spelt[key]} {short_repr(out[key])} and {flag} "
                              f"{short_repr(value)}. Give --{key} once.")
        out[key], spelt[key] = value, flag
        i += 1
    return out


def _unknown_override(flag: str, key: str, options: tuple[str, ...]) -> ConfigError:
    """The error for ``flag`` (``--key``), not a config key: the closest key, or, when no key is
    close, the command's option it begins or resembles (``--check``: ``--checkpoint``)."""
    low = key[:100].lower()
    near: list[str] = []
    if not any(f.startswith(low) for f in FIELD_NAMES) and not difflib.get_close_matches(low, FIELD_NAMES, n=1):
        long = {o[2:]: o for o in options if o.startswith("--")}  # compared without the dashes
        near = [o for o in long.values() if o.startswith(flag) and len(flag) > 3]
        near = near or [long[c] for c in difflib.get_close_matches(low, list(long), n=1, cutoff=0.75)]
    if near:
        why = " (options are not abbreviated)" if near[0].startswith(flag) else ""
        return ConfigError(f"Unknown option {short_repr(flag)}: did you mean {near[0]}?{why}")
    return ConfigError(unknown_key_message(key))


def parse_range(text: str, name: str, minimum: int, maximum: int = MAX_STEPS) -> list[int]:
    """'1-12' → [1..12]; '1,2,4' → [1,2,4]; '8' → [8].  Values above ``maximum`` are refused
    before a range is expanded (``1-1000000000`` must not build a billion-entry list)."""
    too_big = ConfigError(f"{name} values must be at most {maximum} (time steps; MAX_STEPS in ann2snn/app/config.py); "
                          f"got {short_repr(text)}. Use e.g. `{name} {'0-4' if minimum == 0 else '1-8'}`.")
    vals: list[int] = []
    for part in str(text).split(","):
        try:
            if "-" in part.strip()[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(part)
        except ValueError:
            raise ConfigError(f"{name} must be a number, a range like 1-12, or a list like 1,2,4; "
                              f"got {short_repr(text)}.") from None
        if max(lo, hi) > maximum:
            raise too_big
        vals.extend(range(lo, hi + 1))
    if not vals or min(vals) < minimum:
        raise ConfigError(f"{name} values must be >= {minimum}; got {short_repr(text)}.")
    if max(vals) > maximum:
        raise too_big
    return sorted(set(vals))


# --------------------------------------------------------------------------------------------
# output paths, checked before any work
def _name_max(existing: Path) -> tuple[int, int]:
    """(longest file name, longest path) in bytes on the filesystem holding ``existing``."""
    def conf(name: str, default: int) -> int:
        try:
            return int(os.pathconf(existing, name))
        except (OSError, ValueError):
            return default

    return conf("PC_NAME_MAX", 255), conf("PC_PATH_MAX", 4096)


def _nearest_existing(path: Path, flag: str) -> Path:
    """The deepest existing folder of ``path`` (``path`` itself when it exists)."""
    p = path.absolute()
    while True:
        try:
            if p.exists():
                return p
        except OSError as err:
            if err.errno != errno.ENAMETOOLONG:  # too long: its parent is looked at, and the name refused later
                raise OutputError(f"{flag} {str(path)!r} cannot be reached ({err.strerror or err}). Pass a path "
                                  f"you can write to ({_hint(flag)}).") from None
        if p.parent == p:
            return p
        p = p.parent


def _hint(flag: str) -> str:
    """The option that changes the output path named ``flag`` in a message."""
    return {"out_root": "--out_root DIR", "the run folder": "--out DIR, or --out_root DIR / --id NAME",
            "the output folder": "--out DIR"}.get(flag, f"{flag} PATH")


def _probe_writable(folder: Path, path: Path, flag: str) -> None:
    """Really create (with one byte, fsync'ed) and remove a temporary file in ``folder``:
    permission bits say nothing when running as root, and a full disk or a read-only mount show
    only when written to."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ann2snn-probe.", suffix=".tmp", dir=folder)
    except OSError as err:
        raise _unwritable(err, folder, path, flag) from None
    try:
        os.write(fd, b"\0")
        os.fsync(fd)
    except OSError as err:
        raise _unwritable(err, folder, path, flag) from None
    finally:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _unwritable(err: OSError, folder: Path, path: Path, flag: str) -> OutputError:
    where = f"{flag} {str(path)!r}" + ("" if folder == path.absolute() else f" (in {str(folder)!r})")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"{where}: no space left on the device ({err.strerror}). Free space, or write "
                           f"elsewhere ({_hint(flag)}).")
    return OutputError(f"{where} cannot be written: creating a file in {str(folder)!r} failed "
                       f"({err.strerror or err}). Pass a folder you can write to ({_hint(flag)}), or fix its "
                       "permissions.")


def _check_names(path: Path, existing: Path, flag: str) -> None:
    """Every name ``path`` adds below ``existing`` fits the filesystem (NAME_MAX, PATH_MAX)."""
    name_max, path_max = _name_max(existing)
    try:
        new_parts = path.absolute().relative_to(existing).parts
    except ValueError:
        new_parts = path.parts
    for part in new_parts:
        n = len(os.fsencode(part))
        if n > name_max:
            raise OutputError(f"{flag}: the name {part[:40]!r}… is {n} bytes long; this filesystem allows at most "
                              f"{name_max} bytes per name. Use a shorter name ({_hint(flag)}).")
    total = len(os.fsencode(str(path.absolute())))
    if total >= path_max:
        raise OutputError(f"{flag}: the path is {total} bytes long; this system allows at most {path_max - 1}. "
                          f"Use a shorter path ({_hint(flag)}).")


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """A folder that outputs go into (created if missing) can be: not an existing non-folder,
    every new name short enough, and its nearest existing folder really writable."""
    path = Path(path)
    bad = next((c for c in str(path) if ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029"), None)
    if bad is not None:  # a newline in a run's path would make the LATEST naming it unreadable
        shown = str(path)[:80] + ("…" if len(str(path)) > 80 else "")
        raise OutputError(f"{flag} {shown!r} holds a control character ({ord(bad):#04x}); output paths must be "
                          f"printable text (a run's path is written into LATEST, one line). Pass a plain name "
                          f"({_hint(flag)}).")
    existing = _nearest_existing(path, flag)
    if existing == path.absolute() and not existing.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is an existing file, not a folder. Pass a folder path "
                          f"({_hint(flag)}; it is created if missing), or move the file away.")
    if not existing.is_dir():
        raise OutputError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder. "
                          f"Pass a path under a folder ({_hint(flag)}).")
    _check_names(path, existing, flag)
    _probe_writable(existing, path, flag)


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """A file an output is written to can be: not a folder, an existing one opened for writing
    without changing it, else its folder can be created and written in."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {str(path)!r} is a folder, not a file. Pass a file path, e.g. "
                          f"`{flag} {path / ('result.csv' if flag == '--csv' else 'result.json')}`.")
    if path.exists():
        try:
            with open(path, "r+b"):  # opened for writing, not truncated: nothing changes yet
                pass
        except OSError as err:
            raise OutputError(f"{flag} {str(path)!r} cannot be written ({err.strerror or err}). Pass a file you can "
                              f"write to with {flag}, or fix its permissions.") from None
        return
    parent = path.parent if str(path.parent) else Path(".")
    existing = _nearest_existing(parent, flag)
    if not existing.is_dir():
        raise OutputError(f"{flag} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder. "
                          f"Pass a path in a folder with {flag}.")
    _check_names(path, existing, flag)
    _probe_writable(existing, path, flag)


def preflight_outputs(args, out_dir: Path | None, extra_dirs: tuple[tuple[Path, str], ...] = ()) -> None:
    """Check every output path of a command before any work: ``out_dir`` (the folder the command
    writes into, when not None), ``args.out`` (a folder), ``args.json`` / ``args.csv`` (files),
    when present, and ``extra_dirs`` ((folder, name for the message) pairs, e.g. train's
    ``out_root`` for LATEST).  An OutputError names the path and the fix."""
    arg_out = getattr(args, "out", None)
    dirs: list[tuple[Path, str]] = []
    if out_dir is not None:
        same = arg_out is not None and Path(arg_out).absolute() == Path(out_dir).absolute()
        dirs.append((Path(out_dir), "--out" if same else "the output folder"))
    if dirs and getattr(args, "command", None) in ("train", "run") and dirs[0][1] == "the output folder":
        dirs[0] = (dirs[0][0], "the run folder")
    if arg_out and not any(Path(arg_out).absolute() == d.absolute() for d, _ in dirs):
        dirs.append((Path(arg_out), "--out"))
    dirs += [(Path(d), flag) for d, flag in extra_dirs]
    for d, flag in dirs:
        check_output_dir(d, flag)
    for flag in ("json", "csv"):
        value = getattr(args, flag, None)
        if value:
            check_output_file(value, f"--{flag}")


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def os_error_message(err: OSError) -> str:
    """One line for an OS fault no check caught (the last line of defence in :func:`main`):
    which file, what the OS said, and what to do."""
    name = err.filename if err.filename is not None else None
    verb = "write" if err.errno in _WRITE_ERRNOS else "read or write"
    what = f"could not {verb} {name}" if name is not None else f"could not {verb} a file"
    if err.filename2 is not None:
        what += f" (or {err.filename2})"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "Free space on that disk (or write elsewhere with --out DIR) and run again."
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "Check its permissions, or write elsewhere with --out DIR."
    elif err.errno == errno.ENAMETOOLONG:
        fix = "Use a shorter name."
    elif err.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        fix = "A file and a folder are mixed up in that path: pass a folder to --out and files to --json/--csv."
    else:
        fix = "Check the path and the disk, then run again."
    return f"{what}: {err.strerror or err}. {fix}"


# --------------------------------------------------------------------------------------------
# model resolution shared by convert / table
def latest_run(out_root: str) -> Path:
    """The run ``<out_root>/LATEST`` names; a ConfigError when there is none, the marker is
    corrupt, or the run it names has no best_model.pt (moved or deleted)."""
    from ann2snn.app.rundir import LATEST, read_latest

    marker = Path(out_root) / LATEST
    run = read_latest(out_root)
    if run is None:
        raise ConfigError(f"No trained run found under {out_root!r} (no {marker} pointing at a best_model.pt). "
                          "Train first (`ann2snn train -c configs/digits.yml`), or pass -c CONFIG / "
                          "--checkpoint PATH.")
    if not (run / "best_model.pt").is_file():
        raise ConfigError(f"{str(marker)!r} names the run {str(run)!r}, which holds no best_model.pt (it was moved "
                          f"or deleted). Pass -c CONFIG or --checkpoint PATH, or delete {marker} and train again.")
    return run


def config_from_args(args, overrides: dict[str, Any]) -> Config:
    """The config of ``-c`` with ``overrides``.  The file is read once per invocation (its
    mapping is kept on ``args``): ``-c /dev/stdin`` or ``-c <(…)`` is a pipe that can be read only
    once, and `run` loads the config once itself and once more in the command it hands over to."""
    raw = getattr(args, "_config_raw", None)
    if raw is None:
        raw = read_config_file(args.config)
        args._config_raw = raw
    return load_config(args.config, overrides, raw=raw)


def checkpoint_file(text: str, flag: str = "--checkpoint") -> Path:
    """The checkpoint file ``text`` names (given with ``flag``): refused when empty (an empty
    --checkpoint would silently fall back to the config's or the latest run) or a folder (which
    load_checkpoint would report as missing), suggesting the folder's best_model.pt."""
    if not str(text).strip():
        raise ConfigError(f"{flag} is empty; pass a file or omit it (then the config's run, or the latest run, is "
                          "evaluated).")
    path = Path(text)
    if path.is_dir():
        best = path / "best_model.pt"
        fix = (f"did you mean `{flag} {best}`?" if best.is_file()
               else "pass a checkpoint file, e.g. a run's best_model.pt or last.pt.")
        raise ConfigError(f"{flag} {str(path)!r} is a folder, not a checkpoint file; {fix}")
    return path


def resolve(args, overrides: dict[str, Any]):
    """(config, checkpoint path, run dir) from -c / --checkpoint / the latest run."""
    from ann2snn.app.checkpoint import checkpoint_config, load_checkpoint

    if args.checkpoint is not None:
        checkpoint_file(args.checkpoint)
    if args.config:
        cfg = config_from_args(args, overrides)
        if args.checkpoint is None and cfg.model_path is not None:
            checkpoint_file(cfg.model_path, "model_path")
        ckpt = Path(args.checkpoint or cfg.model_path or cfg.run_dir / "best_model.pt")
    elif args.checkpoint:
        ckpt = Path(args.checkpoint)
        stored = checkpoint_config(load_checkpoint(ckpt), ckpt)
        if stored.data_dir is not None and "data_dir" not in overrides:  # a file, not the user, picks the folder read
            log.warning("warning: reading data from %s, the data_dir stored in the checkpoint %r (not given by you); "
                        "pass `--data_dir DIR` to read another folder.", repr(stored.data_dir)[:200], str(ckpt))
        cfg = load_config(None, {**stored.to_dict(), **overrides})
    else:
        run = latest_run(overrides.get("out_root", "runs"))
        cfg = load_config(run / "config.yaml", overrides)
        ckpt = run / "best_model.pt"
    return cfg, ckpt, ckpt.parent


def self_check(model, sim, loader, cfg) -> dict | None:
    """``verify`` on the first test batch under the exact preset (a converted model only): the
    largest |SNN − quantized ANN| once the network is quiescent.  Warns when it exceeds the
    tolerance; None for direct SNNs and the other presets, which approximate by design."""
    from ann2snn.presets import get_preset
    from ann2snn.verify import verify
    from ann2snn.models import model_kind

    if model_kind(cfg.model) != "convertible" or not get_preset(cfg.preset).exact:
        return None
    x, _ = next(iter(loader))
    res = verify(model, sim, x)
    if not res["ok"]:
        log.warning("verify: the converted network does NOT settle on the quantized ANN: %s. The conversion "
                    "is wrong for this model; please report it.", verify_line(res))
    return res


def verify_line(res: dict) -> str:
    state = "quiescent" if res["quiescent"] else f"NOT quiescent after {res['steps_run']} steps"
    return (f"verify (exact, first test batch, t = {res['t']}, {res['dtype']}): max |SNN - quantized ANN| = "
            f"{res['max_abs_diff']:.3g} (logit scale {res['scale']:.3g}, tolerance {res['tolerance']:g} x max(1, "
            f"scale)): {'OK' if res['ok'] else 'FAILED'}; {state}, settled after {res['settle_steps']} steps")


def eval_dir(run_dir: Path, ckpt: Path, kind: str, preset: str, spike_levels: int = 1) -> Path:
    """Where an evaluation of checkpoint ``ckpt`` writes by default: ``<its folder>/<kind>-<its
    name>-<preset>`` (``-m<spike_levels>`` appended when it is not 1), so that two checkpoints or
    settings in one folder never overwrite each other's results."""
    return run_dir / (f"{kind}-{ckpt.stem}-{preset}" + (f"-m{spike_levels}" if spike_levels != 1 else ""))


def _is_main() -> bool:
    """False on torchrun ranks other than 0 (they compute but do not print or write)."""
    from ann2snn.app import distributed

    return distributed.is_main()


# --------------------------------------------------------------------------------------------
# commands
def cmd_train(args, overrides) -> int:
    from ann2snn.app.train import train

    cfg = config_from_args(args, overrides)
    run_dir = Path(args.out) if args.out else cfg.run_dir
    preflight_outputs(args, run_dir, extra_dirs=((Path(cfg.out_root), "out_root"),))  # before any work
    res = train(cfg, out=args.out, resume=args.resume, extend=getattr(args, "extend", False))  # `run`: no --extend
    if _is_main():
        print(f"best test top-1 {res['best_top1']:.2f}%  ->  {res['run_dir']}")
    return 0


def cmd_convert(args, overrides) -> int:
    from ann2snn.app.pipeline import load_trained, simulator_for
    from ann2snn.energy import EnergyMeter, energy_of
    from ann2snn.metrics import evaluate
    from ann2snn.app.plots import write_convert_plots
    from ann2snn.app.report import format_energy_table, format_steps, summary_line, write_json

    cfg, ckpt, run_dir = resolve(args, overrides)
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, "eval", cfg.preset, cfg.spike_levels)
    preflight_outputs(args, out)  # before any work: a bad output path loses no evaluation
    model, loader, _ = load_trained(cfg, ckpt)
    sim = simulator_for(model, cfg)
    check = self_check(model, sim, loader, cfg)
    latency_extra = getattr(args, "latency_extra", 0)  # `run` has no --latency-extra
    with EnergyMeter.for_simulator(sim) as meter:  # firing rates and operations of the t-step run
        res = evaluate(sim, loader, cfg.t, cfg.extra_t, ann=model, meter=meter, latency_extra=latency_extra)
    result = {"ann": res["ann"],
              "snn": {"t": cfg.t, "extra_t": cfg.extra_t, "preset": cfg.preset, "spike_levels": res["spike_levels"],
                      "bits_per_step": res["bits_per_step"], "k_step": res["k_step"],
                      "k_step_is_prefix": res["k_step_is_prefix"], "within_run": res["within_run"]},
              "effective_latency": res["effective_latency"], "checkpoint": str(ckpt), "n": res["n"]}
    if check is not None:
        result["verify"] = check
    if not _is_main():  # under torchrun only rank 0 reports and writes
        return 0
    energy = energy_of(meter, sim, next(iter(loader))[0], cfg.t, cfg.extra_t, getattr(args, "constants", "fp32"),
                       getattr(args, "first_layer", "once"),
                       effective_latency=res["effective_latency"])  # (rank 0's shard under torchrun)
    full = getattr(args, "energy", False)  # `run` has no --energy
    result.update({"energy": energy.to_dict()} if full else {"energy_totals": energy.totals.to_dict()})
    print(format_steps(result))
    if check is not None and getattr(args, "verify", False):
        print(verify_line(check))
    print(format_energy_table(energy) if full else summary_line(energy))
    write_json(out / f"convert_t{cfg.t}_e{cfg.extra_t}.json", result)
    write_convert_plots(result, energy, out)
    if args.json:
        write_json(Path(args.json), result)
    print(f"written: {out}")
    return 0


def cmd_energy(args, overrides) -> int:
    from ann2snn.app.pipeline import load_trained, simulator_for
    from ann2snn.energy import measure_energy
    from ann2snn.app.plots import write_energy_plots
    from ann2snn.app.report import format_energy_table, write_energy_csv, write_energy_json

    cfg, ckpt, run_dir = resolve(args, overrides)
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, "energy", cfg.preset, cfg.spike_levels)
    preflight_outputs(args, out)  # before any work: a bad output path loses no evaluation
    model, loader, _ = load_trained(cfg, ckpt)
    res = measure_energy(model, simulator_for(model, cfg), loader, cfg.t, cfg.extra_t, args.constants,
                         args.max_batches, args.first_layer, latency_extra=args.latency_extra)
    if not _is_main():
        return 0
    meta = {"checkpoint": str(ckpt), "preset": cfg.preset}  # written after the result's own keys
    print(format_energy_table(res))
    write_energy_json(out / f"energy_t{cfg.t}_e{cfg.extra_t}.json", res, meta)
    write_energy_csv(out / f"energy_t{cfg.t}_e{cfg.extra_t}.csv", res)
    write_energy_plots(res, out)
    if args.json:
        write_energy_json(args.json, res, meta)
    if args.csv:
        write_energy_csv(args.csv, res)
    print(f"written: {out}")
    return 0


def cmd_table(args, overrides) -> int:
    from ann2snn.app.pipeline import load_trained, simulator_for
    from ann2snn.metrics import evaluate_ann, evaluate_table
    from ann2snn.app.report import write_table

    rows = parse_range(args.t, "--t", 1)
    extras = parse_range(args.extra_t, "--extra-t", 0)
    cfg, ckpt, run_dir = resolve(args, overrides)
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, "table", cfg.preset, cfg.spike_levels)
    preflight_outputs(args, out)  # before any work: a bad output path loses no evaluation
    model, loader, _ = load_trained(cfg, ckpt)
    t0 = time.perf_counter()
    ann = evaluate_ann(model, loader)
    t1 = time.perf_counter()
    table = evaluate_table(simulator_for(model, cfg), loader, rows, max(extras))
    t2 = time.perf_counter()
    timing = {"ann_eval_s": round(t1 - t0, 3), "table_s": round(t2 - t1, 3),
              "table_over_ann_eval": round((t2 - t1) / max(t1 - t0, 1e-9), 2)}
    if _is_main():  # under torchrun only rank 0 writes
        write_table(out, ann, table, extras, meta={"checkpoint": str(ckpt), "preset": cfg.preset, "n": ann["n"],
                                                    "spike_levels": cfg.spike_levels, "timing": timing})
        print(f"time: ANN evaluation {timing['ann_eval_s']:.2f} s, table {timing['table_s']:.2f} s "
              f"({timing['table_over_ann_eval']:.1f}x the ANN evaluation, same data, one run)")
        from ann2snn.app.plots import NAMES, plot_table_heatmap

        print(f"heatmap: {plot_table_heatmap(ann, table, extras, out / NAMES['heatmap'])}")
    return 0


def cmd_frontier(args, overrides) -> int:
    from ann2snn.app.pipeline import load_trained, simulator_for
    from ann2snn.frontier import frontier, levels_of, parse_levels
    from ann2snn.app.plots import NAMES, plot_frontier
    from ann2snn.app.report import write_frontier

    cfg, ckpt, run_dir = resolve(args, overrides)
    out = Path(args.out) if args.out else eval_dir(run_dir, ckpt, "frontier", cfg.preset)
    preflight_outputs(args, out)  # before any work: a bad output path loses no evaluation
    model, loader, _ = load_trained(cfg, ckpt)
    sim = simulator_for(model, cfg)
    try:
        L = levels_of(sim)
        levels = parse_levels(args.levels, L)
        rows = parse_range(args.t.replace("2L", str(2 * L)).replace("L", str(L)), "--t", 1)
        extras = parse_range(args.extra_t.replace("L", str(L)), "--extra-t", 0)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    res = frontier(model, sim, loader, levels, rows, max(extras), args.energy_batches, args.constants,
                   args.first_layer)
    if not _is_main():
        return 0
    res.update(checkpoint=str(ckpt), preset=cfg.preset)
    write_frontier(out, res)
    print(f"plot: {plot_frontier(res, out / NAMES['frontier'])}")
    return 0


def cmd_run(args, overrides) -> int:
    """Run what an original-style config's ``action``/``mode`` keys ask for."""
    cfg = config_from_args(args, overrides)
    if cfg.action == "train":
        return cmd_train(args, overrides)
    preflight_outputs(args, None)  # --out / --json, before any work
    # --checkpoint on the command line wins over the config's model_path
    given = getattr(args, "checkpoint", None)
    if given is not None:
        checkpoint_file(given)
    elif cfg.model_path is not None:
        checkpoint_file(cfg.model_path, "model_path")
    args.checkpoint = given or cfg.model_path
    if args.checkpoint is None:
        raise ConfigError("action: test needs a checkpoint to evaluate: set model_path in the config "
                          "or pass --checkpoint PATH.")
    if cfg.mode == "ann":
        from ann2snn.app.pipeline import load_trained
        from ann2snn.metrics import evaluate_ann

        model, loader, _ = load_trained(cfg, Path(args.checkpoint))
        ann = evaluate_ann(model, loader)
        if _is_main():
            print(f"ANN top-1 {ann['top1']:.2f}%  top-5 {ann['top5']:.2f}%  loss {ann['loss']:.4f}")
        return 0
    return cmd_convert(args, overrides)


def _energy_constants(text: str):
    from ann2snn.energy import resolve_constants

    try:
        return resolve_constants(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with the error format of every other user error: one line
    ``<prog>: error: <message> (see `<prog> --help`)`` and exit status 2, without the usage block
    (sub-command parsers are of this class too: add_subparsers uses the parent's class).

    No abbreviated options: with them a config override that is the prefix of an option was
    taken for that option without a word (`convert --l 8` set --latency-extra, not l)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def add_argument(self, *args, **kwargs):
        """Options that take a value are stored once: see _StoreOnce."""
        if args and str(args[0]).startswith("-") and kwargs.get("action", "store") == "store":
            kwargs["action"] = _StoreOnce
        return super().add_argument(*args, **kwargs)


# what to do when an option is given twice, by its dest (default: give it once)
_TWICE_HINT = {"config": "only one config file is read: merge them into one, or override single keys with "
                         "--key value"}


class _StoreOnce(argparse.Action):
    """argparse's ``store``, except that an option given twice (``-c a.yml -c b.yml``,
    ``--checkpoint A --checkpoint=B``) is an error naming both values: argparse would keep the
    last one without a word.  What was given is recorded in ``namespace._given`` (dest ->
    (value, option string)), which :func:`main` checks against the config overrides
    (``table --extra-t 0-4 --extra_t 2``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_given", {})
        if self.dest in given:
            first, flag = given[self.dest]
            hint = _TWICE_HINT.get(self.dest, f"give {option_string} once")
            parser.error(f"{'/'.join(self.option_strings)} is given twice: {flag} {_shown(first)} and "
                         f"{option_string} {_shown(values)}; {hint}")
        given[self.dest] = (values, option_string)
        setattr(namespace, self.dest, values)


def _shown(value: Any) -> str:
    """An option's value in a message: its name when it has one (energy constants), else a short repr."""
    name = getattr(value, "name", None)
    return repr(name) if isinstance(name, str) else short_repr(value)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value} (omit it to measure on every test batch)")
    return value


def _steps(text: str) -> int:
    """A number of extra time steps: 0 .. MAX_STEPS."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps, got {text!r}") from None
    if not 0 <= value <= MAX_STEPS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_STEPS}, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ann2snn", description=__doc__.splitlines()[0],
                                epilog="Any config key can be given as --key value; see README.md.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config_required=False):
        sp.add_argument("-c", "--config", required=config_required, help="YAML config file")
        sp.add_argument("--out", help="output directory")
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    def energy_options(sp):
        sp.add_argument("--constants", default="fp32", type=_energy_constants,
                        help="pJ per MAC/AC: fp32 (4.6/0.9), fp16 (1.5/0.4), int8 (0.23/0.03) or 'MAC,AC'")
        sp.add_argument("--first-layer", dest="first_layer", choices=("once", "per_step"), default="once",
                        help="image-fed layer's MACs: once (papers' convention) or on every input step")

    def latency_option(sp):
        sp.add_argument("--latency-extra", dest="latency_extra", type=_steps, default=0, metavar="N",
                        help="observe N more zero-input steps after t + extra_t for the effective latency only "
                             "(accuracy and energy stay at t + extra_t)")

    sp = sub.add_parser("train", help="train a model (QCFS ANN or direct SNN)")
    common(sp, config_required=True)
    sp.add_argument("--resume", action="store_true", help="continue the run in --out / runs/<id> from last.pt")
    sp.add_argument("--extend", action="store_true",
                    help="with --resume: lengthen the run to a larger --epochs N (the cosine schedule is rebuilt)")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("convert", help="convert a trained ANN and print per-step SNN accuracy")
    common(sp)
    sp.add_argument("--checkpoint", help="checkpoint (default: the config's run, or the latest run)")
    sp.add_argument("--json", help="also write the results to this JSON file")
    sp.add_argument("--energy", action="store_true", help="print the per-layer energy table (see `energy`)")
    sp.add_argument("--verify", action="store_true",
                    help="print the self-check: max |SNN - quantized ANN| once quiescent, and the settle steps")
    latency_option(sp)
    energy_options(sp)
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("energy", help="per-layer firing rates, FLOPs, SOPs and energy per image")
    common(sp)
    sp.add_argument("--checkpoint", help="checkpoint (default: the config's run, or the latest run)")
    sp.add_argument("--json", help="also write the results to this JSON file")
    sp.add_argument("--csv", help="also write the per-layer rows to this CSV file")
    sp.add_argument("--max-batches", dest="max_batches", type=_positive_int,
                    help="measure on the first N test batches (N >= 1)")
    latency_option(sp)
    energy_options(sp)
    sp.set_defaults(func=cmd_energy)

    sp = sub.add_parser("table", help="t × (t + extra_t) accuracy table")
    common(sp)
    sp.add_argument("--checkpoint")
    sp.add_argument("--t", default="1-8", help="rows: e.g. 1-12 or 1,2,4,8")
    sp.add_argument("--extra-t", dest="extra_t", default="0-4", help="extra steps per row: e.g. 0-4")
    sp.set_defaults(func=cmd_table)

    sp = sub.add_parser("frontier", help="accuracy against total steps and energy, across spike levels")
    common(sp)
    sp.add_argument("--checkpoint")
    sp.add_argument("--levels", default="1,2,L", help="spike_levels m to compare: e.g. 1,2,L or 1,L/2,L")
    sp.add_argument("--t", default="1-2L", help="rows (input steps): e.g. 1-2L or 1,2,4")
    sp.add_argument("--extra-t", dest="extra_t", default="0-L",
                    help="extra zero-input steps tried per row; a row keeps e = 0 and the fewest that reach its best")
    sp.add_argument("--energy-batches", dest="energy_batches", type=_positive_int, default=4,
                    help="measure each point's energy on the first N test batches")
    energy_options(sp)
    sp.set_defaults(func=cmd_frontier)

    sp = sub.add_parser("run", help="do what an original-style config's action/mode keys say")
    common(sp, config_required=True)
    sp.add_argument("--checkpoint")
    sp.add_argument("--json")
    sp.add_argument("--resume", action="store_true")
    sp.set_defaults(func=cmd_run)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from ann2snn.app.checkpoint import CheckpointError
    from ann2snn.app.data import DataError
    from ann2snn.graph import ConversionError
    from ann2snn.app.train import TrainingError

    return USER_ERRORS + (CheckpointError, ConversionError, DataError, TrainingError)


def _on_sigint(signum, frame) -> NoReturn:
    """main's SIGINT handler: remember the interrupt, then raise KeyboardInterrupt as Python's own
    handler does.  Remembered because the KeyboardInterrupt need not reach main intact: landing
    inside a lazy import (torch.fx importing sympy while tracing) it leaves a half-imported module
    whose AttributeError then surfaces, and would be reported, as a model error; or it is
    swallowed there, and the next progress step raises it again (ann2snn.progress)."""
    note_interrupt()
    raise KeyboardInterrupt


def _install_sigint():
    """Install :func:`_on_sigint`; the handler it replaces (None: nothing installed, since only
    the main thread can, and a SIGINT that is ignored -- a background job -- stays ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGINT)
    if previous in (None, signal.SIG_IGN):
        return None
    signal.signal(signal.SIGINT, _on_sigint)
    return previous


def _options_of(parser: argparse.ArgumentParser, command: str) -> tuple[str, ...]:
    """The option strings of sub-command ``command`` (for suggestions)."""
    for action in parser._actions:  # argparse keeps the sub-parsers only there
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return tuple(action.choices[command]._option_string_actions)
    return ()


def _error_message(err: BaseException) -> str | None:
    """The one line main prints for a user error or an OS fault; None for anything else."""
    if isinstance(err, _user_errors()):
        return str(err)
    if isinstance(err, OSError):  # an OS fault no check caught (a disk filling up mid-run, …): no traceback
        return os_error_message(err)
    return None


def main(argv: list[str] | None = None) -> int:
    note_interrupt(False)
    previous = _install_sigint()
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        note_interrupt(False)  # the record lives while main runs: API calls after it are not interrupted


def _run(argv: list[str] | None) -> int:
    command = "?"
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        command = args.command
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
        overrides = parse_overrides(rest, _options_of(parser, command))
        given = getattr(args, "_given", {})
        for key in overrides:  # `table --extra-t 0-4 --extra_t 2`: an option and an override of one name
            if key in given:
                raise ConfigError(f"{key} is given twice: {given[key][1]} {_shown(given[key][0])} and --{key} "
                                  f"{short_repr(overrides[key])}. Give it once.")
        return args.func(args, overrides)
    except BaseException as err:
        # an interrupt is reported as one, whatever error it turned into on its way up
        if interrupted() or isinstance(err, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        message = None if isinstance(err, SystemExit) else _error_message(err)
        if message is None:
            raise
        print(f"ann2snn {command}: error: {message}", file=sys.stderr)
        return 2
