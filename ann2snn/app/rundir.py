"""Run-directory lifecycle: what ``train --resume`` reads, and what a failed run leaves behind.

- A run directory holds ``config.yaml`` and ``log.csv`` from the start, ``last.pt`` and
  ``best_model.pt`` after the first epoch.  Every file is written atomically
  (:mod:`ann2snn.app.files`), so a killed process leaves either the previous or the new file, never a
  partial one; a stale ``.*.tmp`` left by a kill is removed on the next start.  An epoch writes
  ``last.pt`` first, then ``best_model.pt`` and ``LATEST`` (``ann2snn.app.train._write_epoch``): a
  failure between them leaves this epoch's ``last.pt``, from which ``--resume`` writes the rest.
- A run that fails with an error before it wrote any checkpoint (bad data, Ctrl-C) is removed
  again (:func:`cleanup_on_failure`), so no half-made run remains for a later ``convert`` to find.
  Only the files training itself writes are deleted, and the folder only if that leaves it empty.
  A failure in a later epoch keeps the checkpoints of the epochs before it (``--resume`` continues
  from them).  A run killed by a signal cannot clean up; what it leaves (``config.yaml``,
  ``log.csv``) is not picked up by ``convert`` (``LATEST`` and ``-c`` both need a
  ``best_model.pt``) and ``--resume`` starts it from the beginning.
- A run that *diverged* (an exception of ``discard_on``: a NaN/inf loss or weights) is discarded
  at any epoch when it held no checkpoint before this invocation: its ``best_model.pt`` and
  ``last.pt`` are deleted too, then the rest as above, and ``LATEST`` is put back as it was (or
  removed) if it names the run.  Its checkpoints are of a run the user has to redo with other
  settings, and ``--resume`` would only repeat the same steps.  A ``--resume`` of a run with
  checkpoints keeps them all: they are finite (training never saves non-finite weights), so
  ``LATEST`` never names a diverged model.
- ``--resume`` continues from ``last.pt``; ``log.csv`` rows of epochs after it (written before a
  kill, but not checkpointed) are dropped, so the log matches an uninterrupted run's.  Anything
  else wrong in ``log.csv`` (bytes that are not UTF-8, NUL bytes, malformed rows before the last
  line, a foreign header) is an error naming the line (:func:`check_log`): only a partial last
  line is what a kill leaves.
- One training at a time per run directory: :func:`locked` holds an exclusive ``flock`` on the
  directory for the whole training, so a second one refuses instead of interleaving ``log.csv``
  and overwriting the first one's checkpoints.
- A ``config.yaml`` or ``log.csv`` that is not an ann2snn run's is never overwritten
  (:func:`check_own_files`).
- ``<out_root>/LATEST`` is read and written here only (:func:`read_latest`, :func:`write_latest`);
  every write goes to its own temporary file, so concurrent runs never collide.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from ann2snn.app.files import atomic_write_text, read_bytes
from ann2snn.app.config import FIELD_NAMES, ConfigError

log = logging.getLogger("ann2snn")
LATEST = "LATEST"  # <out_root>/LATEST: the absolute path of the most recent run with a best_model.pt
_WRITTEN = ("config.yaml", "log.csv")  # what training writes before its first checkpoint
CHECKPOINTS = ("best_model.pt", "last.pt")  # what it writes after each epoch


@dataclass
class _Claim:
    run_dir: Path
    foreign: bool  # it held other files (a folder of the user's): training's files are left there
    had_checkpoint: bool  # it held a run's checkpoint before this invocation (a --resume)
    out_root: Path | None  # the folder whose LATEST training may update, and the run LATEST named before
    latest_before: Path | None


_CLAIMED: list[list[_Claim]] = []  # one list per active cleanup_on_failure()


def has_checkpoint(run_dir: Path) -> bool:
    return any(p.is_file() for p in Path(run_dir).glob("*.pt"))


def has_run_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a checkpoint written by training (best_model.pt or last.pt)."""
    return any((Path(run_dir) / name).is_file() for name in CHECKPOINTS)


def remove_stale_temps(run_dir: Path) -> None:
    """Delete temporary files of interrupted atomic writes (``.NAME.XXXX.tmp``)."""
    for p in Path(run_dir).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


# --------------------------------------------------------------------------------------------
# LATEST
def _latest_fix(marker: Path) -> str:
    return (f"Delete it (`rm {marker}`) and pass -c CONFIG or --checkpoint PATH, or train again "
            "(training rewrites it).")


def read_latest(out_root: str | os.PathLike) -> Path | None:
    """The run ``<out_root>/LATEST`` names, or None when there is no such file.  A marker that
    cannot be read or does not hold one path (bytes that are not UTF-8, NUL bytes, nothing, several
    lines) is a ConfigError saying so; whether the run still exists is the caller's question."""
    marker = Path(out_root) / LATEST
    data = read_bytes(marker, f"{str(marker)!r} (the marker naming the latest run)", {
        "folder": "Move it away, then pass -c CONFIG or --checkpoint PATH, or train again.",
        "other": "Fix its permissions, or pass -c CONFIG or --checkpoint PATH."}, ConfigError, missing_ok=True)
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{str(marker)!r} is corrupt: it holds bytes that are not UTF-8 text, not the path "
                          f"of a run. {_latest_fix(marker)}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "\0" in text or len(lines) != 1:
        what = "NUL bytes" if "\0" in text else "nothing" if not lines else f"{len(lines)} lines"
        raise ConfigError(f"{str(marker)!r} is corrupt: it holds {what}, not the path of one run. "
                          f"{_latest_fix(marker)}")
    return Path(lines[0])


def write_latest(run_dir: str | os.PathLike, out_root: str | os.PathLike) -> None:
    """Make ``<out_root>/LATEST`` name ``run_dir`` (absolute), atomically
    (:func:`ann2snn.app.files.atomic_write_text`): readers see the old or the new path, concurrent
    writers never share a temporary file, and a link planted at LATEST is replaced, not followed."""
    atomic_write_text(Path(out_root) / LATEST, f"{Path(run_dir).resolve()}\n")


# --------------------------------------------------------------------------------------------
# the run directory: lock, ownership checks, claim and cleanup
@contextlib.contextmanager
def locked(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``run_dir`` while the block runs (a training: rank 0 only).

    The lock is a ``flock`` on a descriptor of the directory itself (no lock file that a kill
    could leave behind, nothing for the foreign-files check to see); the kernel drops it when the
    process ends, however it ends.  A second training of the same folder gets a ConfigError at
    once.  Creates ``run_dir`` (and missing parents) if needed, and removes the ones it created
    again on exit when they are still empty (a run refused before it wrote anything)."""
    run_dir = Path(run_dir)
    created: list[Path] = []
    for d in [*reversed(run_dir.parents), run_dir]:
        if d.is_dir():
            continue
        try:
            d.mkdir()
            created.append(d)
        except FileExistsError:
            pass  # made by someone else meanwhile (or a file: os.open below says so)
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    log.warning("could not lock %s (%s): a concurrent training of it would not be detected",
                                run_dir, err.strerror or err)
                else:
                    raise ConfigError(f"{str(run_dir)!r} is being trained by another process; wait for it, or "
                                      "use another --out/--id.") from None
            yield run_dir
        finally:
            os.close(fd)  # releases the lock
    finally:
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty


def _is_own_config(path: Path) -> str | None:
    """None when ``path`` holds an ann2snn config (a mapping of config keys), else why not."""
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        return f"it cannot be read as YAML ({type(err).__name__})"
    if not isinstance(raw, dict) or not raw:
        return f"it holds {'nothing' if not raw else 'a ' + type(raw).__name__}, not a mapping of config keys"
    unknown = [k for k in raw if not isinstance(k, str) or k not in FIELD_NAMES]
    if unknown:
        keys = ", ".join(repr(k) for k in unknown[:3]) + (", …" if len(unknown) > 3 else "")
        return f"it has keys that are not ann2snn config keys: {keys}"
    return None


def check_own_files(run_dir: str | os.PathLike, log_fields: list[str]) -> None:
    """Refuse a ``run_dir`` whose ``config.yaml`` or ``log.csv`` is not an ann2snn run's: training
    would overwrite them.  Reads only; call before anything is written."""
    run_dir = Path(run_dir)
    cfg = run_dir / "config.yaml"
    if cfg.exists():
        why = _is_own_config(cfg) if cfg.is_file() else "it is not a file"
        if why:
            raise ConfigError(f"{str(cfg)!r} is not an ann2snn run's config ({why}); training would overwrite "
                              "it. Pass another --out (or --id), or move the file away.")
    log_path = run_dir / "log.csv"
    if log_path.exists():
        header = ",".join(log_fields)
        first = read_bytes(log_path, repr(str(log_path)), "Fix its permissions, or pass another --out (or --id).",
                           ConfigError).split(b"\n", 1)
        line = first[0].rstrip(b"\r")
        complete = len(first) > 1
        ok = line == header.encode() or (not complete and header.encode().startswith(line))
        if not ok:
            shown = line[:80].decode("utf-8", "replace")
            raise ConfigError(f"{str(log_path)!r} is not an ann2snn training log (its first line is {shown!r}, not "
                              f"the header {header!r}); training would overwrite it. Pass another --out (or "
                              "--id), or move the file away.")


def check_log(log_path: str | os.PathLike, log_fields: list[str]) -> None:
    """Refuse to ``--resume`` into a ``log.csv`` holding anything but the header and complete,
    well-formed rows (numbers, one per field) -- except a partial last line (no newline), which
    is what a kill in the middle of a write leaves, and which :func:`truncate_log` drops.  The
    error names the file and the first bad line."""
    log_path = Path(log_path)
    data = read_bytes(log_path, repr(str(log_path)), "Fix its permissions, then `--resume` again.", ConfigError,
                      missing_ok=True)
    if data is None:
        return
    fix = ("Move it away (a new log.csv is started; the checkpoints do not need it) or repair that line, "
           "then `--resume` again.")
    lines = data.split(b"\n")[:-1]  # the part after the last newline is a partial line: dropped
    for i, raw in enumerate(lines, 1):
        raw = raw.rstrip(b"\r")
        where = f"{str(log_path)!r} is corrupt at line {i}"
        if b"\0" in raw:
            raise ConfigError(f"{where}: it holds NUL bytes. {fix}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: byte 0x{raw[err.start]:02x} is not UTF-8 text. {fix}") from None
        row = next(csv.reader([text]), [])
        if i == 1:
            if row != list(log_fields):
                raise ConfigError(f"{where}: {text[:80]!r} is not the header {','.join(log_fields)!r} (it is not "
                                  f"an ann2snn training log). {fix}")
            continue
        if len(row) != len(log_fields):
            raise ConfigError(f"{where}: it has {len(row)} fields, not {len(log_fields)} ({text[:80]!r}). {fix}")
        try:
            epoch = int(row[0])
            for v in row[1:]:
                float(v)
        except ValueError:
            raise ConfigError(f"{where}: {text[:80]!r} is not a row of numbers. {fix}") from None
        if epoch < 1:
            raise ConfigError(f"{where}: epoch {epoch} is not a training epoch. {fix}")


def claim(run_dir: Path, out_root: Path | None = None) -> None:
    """Create ``run_dir`` for writing and remember it, so a failure before its first checkpoint
    removes it again -- unless it already held other files (e.g. ``--out`` pointing at a folder
    of the user's), which are never touched.  ``out_root``: the folder whose LATEST this run may
    update, put back if the run is discarded after diverging.  Call on the rank that writes
    (rank 0)."""
    run_dir = Path(run_dir)
    had_checkpoint = has_run_checkpoint(run_dir)
    foreign = run_dir.is_dir() and any(p.name not in _WRITTEN + CHECKPOINTS and not p.name.endswith(".tmp")
                                       for p in run_dir.iterdir())
    before = None
    if out_root is not None:
        with contextlib.suppress(ConfigError):  # a corrupt LATEST names no run to put back
            before = read_latest(out_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)
    if _CLAIMED:
        _CLAIMED[-1].append(_Claim(run_dir, foreign, had_checkpoint, None if out_root is None else Path(out_root),
                                   before))


def discard_unfinished(run_dir: Path) -> bool:
    """Remove what training wrote into ``run_dir`` when it holds no checkpoint; True if removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or has_checkpoint(run_dir):
        return False
    remove_stale_temps(run_dir)
    for name in _WRITTEN:
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only if empty: never delete a user's other files
    return True


def _same_path(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def discard_diverged(claim: _Claim) -> None:
    """Delete the checkpoints of a run that diverged in its first invocation, and put ``LATEST``
    back as it was before the run (or remove it) when it names this run."""
    run_dir = claim.run_dir
    for name in CHECKPOINTS:
        with contextlib.suppress(OSError):
            (run_dir / name).unlink()
    remove_stale_temps(run_dir)
    root = claim.out_root
    if root is None:
        return
    try:
        named = read_latest(root)
    except ConfigError:
        return  # corrupt: it names no run, so not this one
    if named is None or not _same_path(named, run_dir):
        return  # another run's (e.g. a concurrent one): not ours to change
    marker, before = root / LATEST, claim.latest_before
    if before is not None and not _same_path(before, run_dir) and (before / "best_model.pt").is_file():
        write_latest(before, root)
        log.warning("%s names %s again (as before the diverged run)", marker, before)
    else:
        with contextlib.suppress(OSError):
            marker.unlink()
        log.warning("removed %s: it named the diverged run", marker)


@contextlib.contextmanager
def cleanup_on_failure(discard_on: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """On any exception, discard the run directories claimed inside that have no checkpoint.

    An exception of a type in ``discard_on`` (a diverged run) first deletes the checkpoints of
    the claimed runs that had none before this invocation (:func:`discard_diverged`), so those
    runs are removed whatever epoch they reached; runs that had checkpoints keep them."""
    claimed: list[_Claim] = []
    _CLAIMED.append(claimed)
    try:
        yield
    except BaseException as err:
        diverged = isinstance(err, discard_on)
        for c in claimed:
            if diverged and not c.had_checkpoint:
                discard_diverged(c)
            if not c.foreign and discard_unfinished(c.run_dir):
                log.warning("removed the unfinished run directory %s (%s)", c.run_dir,
                            "its training diverged" if diverged else
                            "the run stopped before its first checkpoint")
        raise
    finally:
        _CLAIMED.remove(claimed)


def resume_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The ``last.pt`` of ``run_dir`` (loaded weights-only), or None when the run was started but
    stopped before its first checkpoint (it then starts over).  CheckpointError when there is no
    such run, or its ``last.pt`` is unusable."""

    from ann2snn.app.checkpoint import CheckpointError, load_checkpoint  # torch: not for `ann2snn --help`

    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    if last.is_file():
        ckpt = load_checkpoint(last)
        missing = [k for k in ("epoch", "optimizer", "scheduler", "best", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{str(last)!r} cannot be resumed from: it lacks {', '.join(missing)} "
                                  "(it is a model-only checkpoint). Start a new run without --resume, "
                                  "or use `inherit: true` with `model_path:` to start from its weights.")
        return ckpt
    if (run_dir / "config.yaml").is_file():
        log.info("%s has no checkpoint yet (the run stopped in its first epoch); starting it over", run_dir)
        return None
    raise CheckpointError(f"Nothing to resume in {str(run_dir)!r}: there is no run there (no last.pt, no "
                          "config.yaml). Check --out / the config's out_root and id (the run directory is "
                          "<out_root>/<id>), or start a new run without --resume.")


def truncate_log(log_path: Path, epoch: int) -> None:
    """Keep the header and the rows of epochs <= ``epoch`` (drops rows a killed run wrote after
    its last checkpoint, and a partial last line: one without a newline); rewritten atomically.
    Call after :func:`check_log`, which refuses anything else that is wrong.

    Works on bytes: the partial last line is dropped before anything is decoded (a kill can cut a
    UTF-8 sequence in half, and :func:`check_log` never looked at that line).  A ``log.csv`` that
    is a symbolic link is always rewritten, as a file of its own: training appends to it next, and
    never writes through a link."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return
    data = read_bytes(log_path, repr(str(log_path)), "Fix its permissions, then `--resume` again.", ConfigError)
    lines = data.split(b"\n")
    complete = [ln.decode("utf-8").rstrip("\r") for ln in lines[:-1]]  # lines[-1]: b"" or a partial line
    if not complete:
        return
    header, keep = next(csv.reader([complete[0]])), []
    for line in complete[1:]:
        row = next(csv.reader([line]), [])
        try:
            ok = len(row) == len(header) and int(row[0]) <= epoch
        except ValueError:
            ok = False
        if ok:
            keep.append(row)
    if len(keep) == len(complete) - 1 and lines[-1] == b"" and not log_path.is_symlink():
        return
    text = io.StringIO(newline="")
    csv.writer(text).writerows([header, *keep])
    atomic_write_text(log_path, text.getvalue())


__all__ = ["CHECKPOINTS", "LATEST", "check_log", "check_own_files", "claim", "cleanup_on_failure",
           "discard_diverged", "discard_unfinished", "has_checkpoint", "has_run_checkpoint", "locked",
           "read_latest", "remove_stale_temps", "resume_checkpoint", "truncate_log", "write_latest"]
