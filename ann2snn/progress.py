"""Progress reporting: a tqdm bar on a terminal, sparse one-line logs otherwise (CI, files).

It also carries the CLI's interrupt flag (:func:`note_interrupt`): the SIGINT handler of
:func:`ann2snn.app.cli.main` sets it, and :func:`progress` raises KeyboardInterrupt at the next item
when it is set.  A Ctrl-C that lands inside a lazy import (torch.fx importing sympy while
tracing) can be swallowed there; without this check the run would go on, and finish, as if the
key had never been pressed (measured: a tiny train run completed, exit 0).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("ann2snn")
_ENABLED = True
_INTERRUPTED = False


def set_enabled(flag: bool) -> None:
    """Turn progress output off (e.g. on non-zero distributed ranks)."""
    global _ENABLED
    _ENABLED = bool(flag)


def note_interrupt(flag: bool = True) -> None:
    """Record that the user interrupted the command (Ctrl-C), or clear the record (``False``)."""
    global _INTERRUPTED
    _INTERRUPTED = bool(flag)


def interrupted() -> bool:
    """True when an interrupt was recorded by :func:`note_interrupt` (and not cleared)."""
    return _INTERRUPTED


def _check_interrupt() -> None:
    if _INTERRUPTED:
        raise KeyboardInterrupt("interrupted earlier (Ctrl-C); the interrupt had been swallowed")


def progress(it: Iterable[T], desc: str = "", total: int | None = None, every_s: float = 30.0,
             unit: str = "batches") -> Iterator[T]:
    """Yield the items of ``it``; on a terminal with a tqdm bar, else with a log line
    ``desc: i/total unit, s`` at most every ``every_s`` seconds.  Raises KeyboardInterrupt
    before an item when an interrupt was recorded (see the module docstring)."""
    if total is None:
        try:
            total = len(it)  # type: ignore[arg-type]
        except TypeError:
            total = None
    _check_interrupt()
    if not _ENABLED:
        for item in it:
            yield item
            _check_interrupt()
        return
    if sys.stderr.isatty() and not os.environ.get("ANN2SNN_NO_TQDM"):
        from tqdm import tqdm

        for item in tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True):
            yield item
            _check_interrupt()
        return
    start = last = time.monotonic()
    for i, item in enumerate(it, 1):
        yield item
        _check_interrupt()
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            log.info("%s: %d%s %s, %.0f s", desc, i, of, unit, now - start)
