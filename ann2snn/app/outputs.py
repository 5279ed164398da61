"""Output paths, checked before any work, and the one line for an OS fault no check caught.

A command that would write into a folder that is a file, a folder this process cannot write to, a
name too long for the filesystem or a full disk says so before an hour of evaluation is lost:
:func:`preflight_outputs` checks every output path of a command (its folder, ``--out``,
``--json`` / ``--csv``) by really creating (and removing) a file where each goes.  What slips
through anyway (a disk filling up mid-run) is turned into one line by :func:`os_error_message`.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from ann2snn.app.config import ConfigError


class OutputError(ConfigError):
    """An output path that cannot be written: a file where a folder is needed (or the reverse), a
    folder this process cannot write to, a name too long for the filesystem, a full disk.  Found
    by :func:`preflight_outputs` before any work, so no hour of evaluation is lost to it."""


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
    """One line for an OS fault no check caught (the last line of defence of
    :func:`ann2snn.app.cli.main`): which file, what the OS said, and what to do."""
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


__all__ = ["OutputError", "check_output_dir", "check_output_file", "os_error_message", "preflight_outputs"]
