"""Run-directory lifecycle: what ``train --resume`` reads, and what a failed run leaves behind.

- A run directory holds ``config.yaml`` and ``log.csv`` from the start, ``last.pt`` and
  ``best_model.pt`` after the first epoch.  Checkpoints are written atomically
  (:func:`ann2snn.checkpoint.atomic_save`), so a killed process leaves either the previous or the
  new file, never a partial one; a stale ``.*.tmp`` left by a kill is removed on the next start.
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
  kill, but not checkpointed) are dropped, so the log matches an uninterrupted run's.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("ann2snn")
_WRITTEN = ("config.yaml", "log.csv")  # what training writes before its first checkpoint
CHECKPOINTS = ("best_model.pt", "last.pt")  # what it writes after each epoch


@dataclass
class _Claim:
    run_dir: Path
    foreign: bool  # it held other files (a folder of the user's): training's files are left there
    had_checkpoint: bool  # it held a run's checkpoint before this invocation (a --resume)
    latest: Path | None  # the LATEST marker training may update, and its text before
    latest_before: str | None


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


def claim(run_dir: Path, latest: Path | None = None) -> None:
    """Create ``run_dir`` for writing and remember it, so a failure before its first checkpoint
    removes it again -- unless it already held other files (e.g. ``--out`` pointing at a folder
    of the user's), which are never touched.  ``latest``: the LATEST marker this run may update,
    put back if the run is discarded after diverging.  Call on the rank that writes (rank 0)."""
    run_dir = Path(run_dir)
    had_checkpoint = has_run_checkpoint(run_dir)
    foreign = run_dir.is_dir() and any(p.name not in _WRITTEN + CHECKPOINTS and not p.name.endswith(".tmp")
                                       for p in run_dir.iterdir())
    before = None
    if latest is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            before = Path(latest).read_text()
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(run_dir)
    if _CLAIMED:
        _CLAIMED[-1].append(_Claim(run_dir, foreign, had_checkpoint, None if latest is None else Path(latest),
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


def _same_path(a: str | Path, b: Path) -> bool:
    try:
        return Path(str(a).strip()).resolve() == b.resolve()
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
    marker = claim.latest
    if marker is None or not marker.is_file():
        return
    try:
        names_this_run = _same_path(marker.read_text(), run_dir)
    except (OSError, UnicodeDecodeError):
        return
    if not names_this_run:
        return  # another run's (e.g. a concurrent one): not ours to change
    before = claim.latest_before
    if (before is not None and not _same_path(before, run_dir)
            and (Path(before.strip()) / "best_model.pt").is_file()):
        tmp = marker.with_name(f".{marker.name}.tmp")
        tmp.write_text(before)
        tmp.replace(marker)
        log.warning("%s names %s again (as before the diverged run)", marker, before.strip())
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
    from ann2snn.checkpoint import CheckpointError, load_checkpoint

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
    its last checkpoint, and a partial last line); rewritten atomically."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return
    with open(log_path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, keep = rows[0], [rows[0]]
    for row in rows[1:]:
        try:
            ok = len(row) == len(header) and int(row[0]) <= epoch
        except ValueError:
            ok = False
        if ok:
            keep.append(row)
    if len(keep) == len(rows):
        return
    tmp = log_path.with_name(f".{log_path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, log_path)


__all__ = ["CHECKPOINTS", "claim", "cleanup_on_failure", "discard_diverged", "discard_unfinished",
           "has_checkpoint", "has_run_checkpoint", "remove_stale_temps", "resume_checkpoint", "truncate_log"]
