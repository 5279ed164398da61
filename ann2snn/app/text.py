"""Text data for the language models: byte-level next-token windows.

Every text set yields ``(ids [context] long, targets [context] long)``: ``context`` consecutive
bytes and the same window shifted by one, so the model scores the next byte at every position
(vocabulary: the 256 byte values; any file is valid input, UTF-8 or not).  The text is split once,
the first 90 % for training and the last 10 % for testing, each cut into non-overlapping windows.

Registered sets:

- ``python_docs`` (the embedded default): the Python Language Reference and Library topics that
  ship with every CPython as ``pydoc_data.topics`` (what ``help("if")`` prints): 79 topics,
  464 970 characters of English prose and code in Python 3.11, under the PSF License (Python
  Software Foundation License Version 2, as is all of CPython).  The topics are joined in sorted
  order, so the corpus depends only on the Python version, which the run log names.
- ``text``: a UTF-8 (or any) text file, or every ``*.txt`` file of a folder and its subfolders in
  path order, given as ``data_dir``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ann2snn.app.datainfo import DataError, DataInfo

log = logging.getLogger("ann2snn")

VOCAB = 256  # byte values
TRAIN_FRACTION = 0.9
MAX_TEXT_BYTES = 1 << 30  # 1 GiB: a larger corpus is read by streaming, not into memory at once


class TokenWindows(Dataset):
    """``context``-byte windows of a byte tensor: item i is (ids[i·c : i·c + c], ids[i·c + 1 : i·c + c + 1])."""

    def __init__(self, data: torch.Tensor, context: int):
        self.data, self.context = data, int(context)

    def __len__(self) -> int:
        return max((len(self.data) - 1) // self.context, 0)

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.context
        chunk = self.data[start: start + self.context + 1].long()
        return chunk[:-1], chunk[1:]


def encode(text: str | bytes) -> torch.Tensor:
    """Text as byte ids (UTF-8 for a str)."""
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if not raw:  # torch.frombuffer refuses an empty buffer
        return torch.zeros(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).clone()


def decode(ids) -> str:
    """Byte ids as text (UTF-8; a byte that is not valid UTF-8 shows as U+FFFD)."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(int(v) & 0xFF for v in values).decode("utf-8", errors="replace")


def python_docs_text() -> str:
    """The embedded corpus: every ``pydoc_data.topics`` entry, in sorted key order."""
    from pydoc_data import topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def _split(data: torch.Tensor, cfg, name: str, source: str) -> tuple[Dataset, Dataset, DataInfo]:
    context = int(cfg.context)
    cut = int(len(data) * TRAIN_FRACTION)
    train, test = TokenWindows(data[:cut], context), TokenWindows(data[cut:], context)
    if len(train) == 0 or len(test) == 0:
        raise DataError(f"The text of {source} has {len(data)} bytes: too short for one training and one test window "
                        f"of context {context} (it needs at least {int((context + 1) / (1 - TRAIN_FRACTION)) + 1} "
                        "bytes). Use a longer text or a smaller `--context`.")
    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()[:12]
    log.info("text %s: %d bytes (sha256 %s…), %d training and %d test windows of %d bytes", source, len(data), digest,
             len(train), len(test), context)
    return train, test, DataInfo(name, VOCAB, 1, 0, (), (), context=context)


def build_python_docs(cfg, download: bool | None = None):
    """The embedded corpus (see the module docstring); no file, no download."""
    data = encode(python_docs_text())
    version = ".".join(map(str, sys.version_info[:3]))
    return _split(data, cfg, "python_docs", f"python_docs (pydoc_data.topics of Python {version})")


def _text_files(root: Path) -> list[Path]:
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"The folder {str(root)!r} holds no *.txt file. Point `--data_dir` at a text file, or at a "
                            "folder of .txt files.")
        return files
    if root.is_file():
        return [root]
    raise DataError(f"No text at {str(root)!r}: no such file or folder. Point `--data_dir` at a text file, or at a "
                    "folder of .txt files (`--data text --data_dir corpus.txt`).")


def build_text(cfg, download: bool | None = None):
    """A text file, or the ``*.txt`` files of a folder in name order, from ``data_dir``."""
    if not cfg.data_dir:
        raise DataError("data `text` reads the file or folder given as data_dir. Pass `--data_dir corpus.txt` (a file, "
                        "or a folder of .txt files), or use the embedded corpus: `--data python_docs`.")
    root = Path(os.path.expanduser(cfg.data_dir))
    files = _text_files(root)
    total = sum(p.stat().st_size for p in files)
    if total > MAX_TEXT_BYTES:
        raise DataError(f"The text under {str(root)!r} has {total} bytes, more than the {MAX_TEXT_BYTES} this loader "
                        "holds in memory. Use a part of it.")
    chunks = []
    for p in files:
        try:
            chunks.append(p.read_bytes())
        except OSError as err:
            raise DataError(f"could not read the text file {str(p)!r}: {err.strerror or err}. Check its permissions, "
                            "or leave it out of the folder.") from None
    return _split(encode(b"\n".join(chunks)), cfg, "text", repr(str(root)))


__all__ = ["TokenWindows", "VOCAB", "build_python_docs", "build_text", "decode", "encode", "python_docs_text"]
