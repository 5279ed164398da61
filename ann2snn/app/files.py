"""Every file the application writes, and the messages for files it cannot read: one module, so
each file is written the same way and every unreadable file is reported the same way.

Atomic writes of every result and run file (checkpoints, LATEST, log.csv rewrites, config.yaml,
reports and plots); training's per-epoch log rows are the one append (:func:`append_text`).

The data goes to a temporary file of its own in the target's folder (a unique name from
``tempfile.mkstemp``, mode 0644), is fsync'ed, then ``os.replace``d over the target:

- a reader, or a process killed at any moment, sees the old file or the new one, never a partial
  one, and a full disk leaves no 0-byte or half-written file (the temporary file is removed on any
  failure, and the target is as it was);
- a rename replaces a symbolic link itself, never the file it points to, so a link planted in an
  output folder (``table.md -> /elsewhere``) cannot make a write land outside it.

A target that exists and is neither a regular file nor a folder once links are followed -- a
device, a pipe (``--json /dev/stdout``, ``/dev/null``, a FIFO) -- is written in place instead:
renaming a file over ``/dev/stdout`` would replace the device link, not print anything.

An OSError always names the target file (``filename``: what ``ann2snn.app.outputs.os_error_message``
prints), not the temporary file.  ``torch.save`` reports a failed write of its zip writer as a
RuntimeError chained on the OSError (``unexpected pos …``); that is turned back into the OSError.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, BinaryIO, Iterator, Mapping

MODE = 0o644  # mkstemp's 0600 would hide results from the other users of a shared folder
# torch's zip writer (PytorchStreamWriter) when a write fails: "unexpected pos 114816 vs 114708",
# "… failed writing file data/0: file write failed"
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "failed writing file")


def _named(err: OSError, path: Path) -> OSError:
    """``err`` naming ``path`` (the target, not the temporary file) and nothing else."""
    if err.filename == str(path) and err.filename2 is None:
        return err
    return OSError(err.errno, err.strerror or str(err), str(path))  # OSError() picks the subclass by errno


def write_error(err: BaseException, path: Path) -> OSError | None:
    """The OSError behind a failed write of ``path``, or None when ``err`` is not one: an OSError
    itself, or a RuntimeError of torch's zip writer whose cause or context is an OSError (or whose
    message says the write failed: then an EIO naming the file)."""
    if isinstance(err, OSError):
        return _named(err, path)
    if isinstance(err, RuntimeError):
        for inner in (err.__cause__, err.__context__):
            if isinstance(inner, OSError):
                return _named(inner, path)
        text = str(err)
        if any(s in text for s in _TORCH_WRITE_FAILED):
            first = " ".join(text.split())[:160]
            return OSError(errno.EIO, f"the write failed ({first})", str(path))
    return None


def _is_stream(path: Path) -> bool:
    """True when ``path`` exists and is, links followed, neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _fdopen(fd_or_path, text: bool, newline: str | None) -> IO:
    if text:
        return open(fd_or_path, "w", encoding="utf-8", newline=newline)
    return open(fd_or_path, "wb")


def _raise_mapped(err: BaseException, path: Path) -> None:
    """Raise the OSError behind ``err`` (naming ``path``), or ``err`` itself when there is none."""
    mapped = write_error(err, path)
    if mapped is None:
        raise err
    raise mapped from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, text: bool = False, newline: str | None = None) -> Iterator[IO]:
    """A file object to write ``path`` through: binary (``torch.save(obj, f)``,
    ``fig.savefig(f, format="png")``), or UTF-8 text with ``text=True`` (``newline`` as for
    ``open``).  On a clean exit the data is fsync'ed and renamed over ``path``; on any exception
    the temporary file is removed and ``path`` is left as it was.  Creates missing parent folders.
    A write error is raised as an OSError naming ``path`` (see :func:`write_error`)."""
    path = Path(path)
    if _is_stream(path):  # a device or pipe: there is nothing to replace atomically
        try:
            with _fdopen(path, text, newline) as f:
                yield f
        except (OSError, RuntimeError) as err:
            _raise_mapped(err, path)
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a short prefix: the temporary name must fit NAME_MAX even when the target's name nearly does
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        _raise_mapped(err, path)
    try:
        with _fdopen(fd, text, newline) as f:
            os.fchmod(f.fileno(), MODE)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _raise_mapped(err, path)
    with contextlib.suppress(OSError):  # the rename itself reaches the disk (best effort)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`); returns ``path``."""
    with atomic_open(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` (UTF-8, one write) to ``path``, created 0644 if missing, never through a
    symbolic link planted there (O_NOFOLLOW: an OSError instead).  Training's log rows only: a
    partial row left by a failure is dropped by ``--resume`` (``rundir.truncate_log``)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, MODE)
    with open(fd, "ab") as f:
        f.write(text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# reading: one message for a file that cannot be read
def read_failure(err: OSError, what: str, fix: str | Mapping[str, str]) -> str:
    """One line for a file that could not be read: ``what`` names it (``"Config file 'c.yml'"``),
    then what went wrong (does not exist / is a directory / permission denied / the OS's words),
    then ``fix``: one text, or one per kind of failure (keys ``missing``, ``folder``, ``denied``,
    ``other``; ``other`` for a kind not given)."""
    if isinstance(err, FileNotFoundError):
        kind, problem = "missing", "does not exist"
    elif isinstance(err, IsADirectoryError):
        kind, problem = "folder", "is a directory, not a file"
    elif isinstance(err, PermissionError):
        kind, problem = "denied", "cannot be read: permission denied"
    else:
        kind, problem = "other", f"cannot be read: {err.strerror or err}"
    if not isinstance(fix, str):
        fix = fix.get(kind, fix.get("other", ""))
    return f"{what} {problem}. {fix}".rstrip()


def read_bytes(path: str | os.PathLike, what: str, fix: str | Mapping[str, str], error: type[Exception],
               missing_ok: bool = False) -> bytes | None:
    """The bytes of ``path``; None when it does not exist and ``missing_ok``; any other OSError is
    ``error`` with :func:`read_failure`'s message."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        if missing_ok:
            return None
        raise error(read_failure(err, what, fix)) from None
    except OSError as err:
        raise error(read_failure(err, what, fix)) from None


@contextlib.contextmanager
def opened(path: str | os.PathLike, what: str, fix: str | Mapping[str, str],
           error: type[Exception]) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading (e.g. for ``torch.load``); a failure to open it is
    ``error`` with :func:`read_failure`'s message.  What the reader then raises is its own."""
    try:
        f = open(path, "rb")
    except OSError as err:
        raise error(read_failure(err, what, fix)) from None
    with f:
        yield f


__all__ = ["MODE", "append_text", "atomic_open", "atomic_write_bytes", "atomic_write_text", "opened", "read_bytes",
           "read_failure", "write_error"]
