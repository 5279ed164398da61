"""Progress reporting: a tqdm bar on a terminal, sparse one-line logs otherwise (CI, files)."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("ann2snn")
_ENABLED = True


def set_enabled(flag: bool) -> None:
    """Turn progress output off (e.g. on non-zero distributed ranks)."""
    global _ENABLED
    _ENABLED = bool(flag)


def progress(it: Iterable[T], desc: str = "", total: int | None = None, every_s: float = 30.0) -> Iterator[T]:
    if total is None:
        try:
            total = len(it)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not _ENABLED:
        yield from it
        return
    if sys.stderr.isatty() and not os.environ.get("ANN2SNN_NO_TQDM"):
        from tqdm import tqdm

        yield from tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    for i, item in enumerate(it, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f"/{total}" if total else ""
            log.info("%s: %d%s batches, %.0f s", desc, i, of, now - start)
