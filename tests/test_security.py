"""Security of the data a run reads (issue 17): no code runs from a CIFAR pickle, a data folder
named by a checkpoint is announced, and no idx file or checkpoint inflates into more memory than
there is.

Every memory bomb is loaded in a subprocess under ``resource.setrlimit(RLIMIT_AS, …)`` (a few
hundred MB above the interpreter's address space after its imports), so that the suite can never
exhaust the machine; the bombs are written cheaply (repeated gzip members, a precomputed deflate
block) and never inflated by the test itself.
"""
from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import shlex
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ann2snn.app import checkpoint, data
from ann2snn.app.config import Config, ConfigError
from ann2snn.app.data import DataError, build_datasets

from helpers import ROOT, TINY, assert_user_error, run_cli, write_cifar, write_fmnist, write_yaml

SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
MiB = 2**20
pytestmark = pytest.mark.usefixtures("offline")


# ================================================================================ CIFAR pickles
def py2_cifar_batch(data_u8: np.ndarray, labels: list[int]) -> bytes:
    """A batch laid out as the real CIFAR-10 files are: cPickle protocol 2 from Python 2 and NumPy 1
    (str as SHORT_BINSTRING/BINSTRING, the array as numpy.core.multiarray._reconstruct of
    numpy.ndarray, its dtype as numpy.dtype('u1') with the version-3 state)."""
    def s(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<i", len(b)) + b)

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    return b"".join([
        b"\x80\x02}(", s(b"batch_label"), s(b"training batch 1 of 5"), s(b"data"),
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85", s(b"b"), b"\x87R(K\x01",
        i(len(data_u8)), i(3072), b"\x86cnumpy\ndtype\n", s(b"u1"), b"K\x00K\x01\x87R(K\x03", s(b"|"),
        b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89", s(data_u8.astype(np.uint8).tobytes()), b"tb",
        s(b"labels"), b"](", b"".join(i(v) for v in labels), b"e", s(b"filenames"), b"](",
        s(b"x.png") * len(labels), b"eu."])


def os_system_call(marker: Path) -> bytes:
    """Protocol-2 opcodes that call os.system("touch MARKER"), its result left on the stack."""
    cmd = f"touch {shlex.quote(str(marker))}".encode()
    return (b"\x80\x02c" + os.system.__module__.encode() + b"\nsystem\n"
            + b"X" + struct.pack("<I", len(cmd)) + cmd + b"\x85R")


def evil_batch(marker: Path, valid: bool) -> bytes:
    """``os.system`` from a ``__reduce__``; with ``valid``, followed by a genuine batch, so that
    ``pickle.load`` returns good data and the run would finish with exit 0 and no word."""
    if not valid:
        return os_system_call(marker) + b"."
    rng = np.random.default_rng(0)
    batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, 20).tolist()}
    return os_system_call(marker) + b"0" + pickle.dumps(batch, protocol=2)[2:]  # POP, then all after PROTO


def evil_cifar_folder(root: Path, marker: Path, valid: bool) -> Path:
    folder = write_cifar(root, "cifar10")
    (folder / "data_batch_1").write_bytes(evil_batch(marker, valid))
    return folder


def test_the_evil_batches_would_run_code(tmp_path):
    """The payloads are real: plain pickle.load runs os.system (and, for one, returns a valid batch)."""
    for valid in (False, True):
        marker = tmp_path / f"ran-{valid}"
        out = pickle.loads(evil_batch(marker, valid), encoding="bytes")
        assert marker.exists()
        assert not valid or out[b"data"].shape == (20, 3072)


def test_cifar_batches_in_every_real_layout_load(tmp_path):
    """The restricted unpickler reads what the real files hold (Python 2 protocol 2) and the same
    dict written by Python 3 with every protocol: NumPy arrays (also Fortran-ordered and strided),
    lists of ints and np.int64, bytes (also empty) and strings."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    (tmp_path / "py2").write_bytes(py2_cifar_batch(pixels, [3, 1, 4, 1]))
    x, y = data.read_cifar_pickle(tmp_path / "py2", b"labels", 10, "FIXES")
    assert torch.equal(x, torch.from_numpy(pixels.reshape(4, 3, 32, 32))) and y.tolist() == [3, 1, 4, 1]
    batch = {b"data": pixels, b"labels": [np.int64(2), 0, 9, 5], b"batch_label": "train", b"names": [b"", b"a"],
             b"fortran": np.asfortranarray(np.ones((2, 3))), b"strided": np.ones((3, 4))[:, ::2]}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        f = tmp_path / f"p{protocol}"
        f.write_bytes(pickle.dumps(batch, protocol=protocol))
        x, y = data.read_cifar_pickle(f, b"labels", 10, "FIXES")
        assert torch.equal(x.reshape(4, -1), torch.from_numpy(pixels)) and y.tolist() == [2, 0, 9, 5], protocol
        got = data.CifarUnpickler(io.BytesIO(f.read_bytes()), encoding="bytes").load()
        assert (got[b"fortran"] == 1).all() and got[b"strided"].shape == (3, 2) and got[b"names"] == [b"", b"a"]


class _Reduce:
    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


@pytest.mark.parametrize("reduce,words", [
    ((eval, ("1 + 1",)), ["builtins.eval"]),
    ((getattr, ("", "join")), ["builtins.getattr"]),
    ((subprocess.Popen, (["true"],)), ["subprocess.Popen"]),
    ((np.ndarray, ((10**13,),)), ["numpy.ndarray may only be passed to _reconstruct"]),  # 10 TB in 5 bytes
    ((bytes, (10**13,)), ["bytes is allowed only without arguments"]),
    ((np.load, ("x.npy",)), ["numpy.load"]),
])
def test_cifar_unpickler_refuses_other_globals_and_calls(tmp_path, reduce, words):
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps({b"data": _Reduce(*reduce), b"labels": []}, protocol=2))
    with pytest.raises(DataError) as e:
        data.read_cifar_pickle(f, b"labels", 10, "FIXES")
    msg = str(e.value)
    assert all(w in msg for w in words) and str(f) in msg and "FIXES" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("valid", [False, True], ids=["payload", "payload+valid batch"])
def test_a_cifar_pickle_runs_no_code_through_the_cli(capsys, tmp_path, valid):
    marker = tmp_path / "MARKER"
    evil_cifar_folder(tmp_path / "evil", marker, valid)
    cfg = write_yaml(tmp_path / "tiny.yml", TINY)
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--data", "cifar10", "--data_dir", tmp_path / "evil",
                               "--out", tmp_path / "run", "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "data_batch_1", f"Python global {os.system.__module__}.system",
                      "nothing in it was run", "--data_dir")
    assert not marker.exists()
    assert not (tmp_path / "run" / "best_model.pt").exists()


def stored_config_checkpoint(path: Path, **config) -> Path:
    """A checkpoint the weights-only loader accepts, whose stored config is ``TINY`` with ``config``."""
    torch.save({"format": 1, "config": {**TINY, **config}, "model": {}}, path)
    return path


@pytest.mark.parametrize("valid", [False, True], ids=["payload", "payload+valid batch"])
def test_a_cifar_pickle_named_by_a_checkpoint_runs_no_code_and_the_folder_is_announced(capsys, caplog, tmp_path,
                                                                                       valid):
    marker, evil = tmp_path / "MARKER", tmp_path / "evil"
    evil_cifar_folder(evil, marker, valid)
    ckpt = stored_config_checkpoint(tmp_path / "X.pt", data="cifar10", data_dir=str(evil))
    with caplog.at_level(logging.WARNING, logger="ann2snn"):
        rc, err = run_cli(capsys, ["convert", "--checkpoint", ckpt, "--out", tmp_path / "o"])
    assert_user_error(rc, err, "convert", "data_batch_1", f"Python global {os.system.__module__}.system",
                      "nothing in it was run")
    assert not marker.exists()
    announced = [r.getMessage() for r in caplog.records if "data_dir stored in the checkpoint" in r.getMessage()]
    assert len(announced) == 1 and "\n" not in announced[0], caplog.text
    assert repr(str(evil)) in announced[0] and str(ckpt) in announced[0] and "--data_dir DIR" in announced[0]


def test_a_data_dir_given_by_the_user_is_not_announced(capsys, caplog, tmp_path):
    ckpt = stored_config_checkpoint(tmp_path / "X.pt", data="cifar10", data_dir=str(tmp_path / "elsewhere"))
    plain = stored_config_checkpoint(tmp_path / "plain.pt", data="cifar10")  # no data_dir stored
    (tmp_path / "mine").mkdir()
    with caplog.at_level(logging.WARNING, logger="ann2snn"):
        rc, err = run_cli(capsys, ["convert", "--checkpoint", ckpt, "--data_dir", tmp_path / "mine"])
        assert_user_error(rc, err, "convert", "cifar10 not found", str(tmp_path / "mine"))
        rc, err = run_cli(capsys, ["convert", "--checkpoint", plain, "--data_dir", tmp_path / "mine"])
        assert_user_error(rc, err, "convert", "cifar10 not found")
    assert "data_dir stored in the checkpoint" not in caplog.text


# ============================================================================ memory-limited runs
LIMITED = """
import resource, sys
sys.path.insert(0, {root!r})
import torch  # noqa: F401  (imported before the limit: its mappings are not what is tested)
from ann2snn.app import checkpoint, cli, data
from ann2snn.app.config import Config
with open("/proc/self/status") as f:
    used = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (used + {headroom}, used + {headroom}))
try:
{body}
except MemoryError:
    print("MemoryError: the bomb was inflated"); sys.exit(4)
"""


def run_limited(body: str, headroom: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """``body`` (indented code) in a fresh interpreter whose address space may grow by ``headroom``
    bytes at most after torch and ann2snn are imported."""
    code = LIMITED.format(root=str(ROOT), headroom=headroom, body=body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=SUB_ENV,
                          timeout=timeout)


# ==================================================================================== idx files
def write_gzip_zeros(path: Path, head: bytes, n_zeros: int) -> None:
    """``head`` then ``n_zeros`` zero bytes, gzip-compressed, written without compressing them: a
    gzip file may hold several members (``gzip.open`` reads them as one stream), so one member of
    1 MiB of zeros is compressed once and repeated."""
    block = gzip.compress(bytes(MiB), 9)
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(n_zeros // MiB):
            f.write(block)
        if n_zeros % MiB:
            f.write(gzip.compress(bytes(n_zeros % MiB)))


def idx_head(*dims: int, ndim: int | None = None) -> bytes:
    return struct.pack(f">{1 + len(dims)}i", 0x0800 | (ndim or len(dims)), *dims)


# 343 MiB = 458752 images of 28x28 exactly: an honest header for a file too big for the limit
@pytest.mark.slow
@pytest.mark.parametrize("head,n_zeros,words", [
    (idx_head(10, 28, 28), 300 * MiB, ["header says [10, 28, 28] (7840 bytes) but more data follows",
                                       "it was not inflated"]),
    (idx_head(458752, 28, 28), 343 * MiB, ["announces [458752, 28, 28] (0.33 GiB), more than half of the memory "
                                           "available"]),
], ids=["lying header", "honest but too big"])
def test_an_idx_gzip_bomb_is_refused_before_it_is_inflated(tmp_path, head, n_zeros, words):
    write_fmnist(tmp_path)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    write_gzip_zeros(bomb, head, n_zeros)
    assert bomb.stat().st_size < 2 * MiB
    body = ("    data.build_datasets(Config(data='fashion_mnist', data_dir=sys.argv[1]), download=False)\n"
            "except data.DataError as err:\n    print(err); sys.exit(3)")
    proc = run_limited(body.replace("sys.argv[1]", repr(str(tmp_path))), headroom=256 * MiB)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert str(bomb) in proc.stdout and "--data_dir" in proc.stdout, proc.stdout
    for w in words:
        assert w in proc.stdout, proc.stdout


@pytest.mark.parametrize("head,words", [
    (idx_head(3, 27, 27), ["its header says items of 27x27, expected 28x28"]),
    (idx_head(20_000_000, 28, 28), ["announces 20000000 items, more than the 10000000"]),
    (idx_head(-5, 28, 28), ["negative dims [-5, 28, 28]"]),
    (idx_head(1, 28, ndim=3), ["only 12 bytes"]),
], ids=["27x27 items", "20M items", "negative", "short header"])
def test_an_idx_header_is_checked_before_the_data_is_read(tmp_path, head, words):
    write_fmnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(head))
    with pytest.raises(DataError) as e:
        build_datasets(Config(data="fashion_mnist", data_dir=str(tmp_path)), download=False)
    msg = str(e.value)
    assert str(bad) in msg and "--data_dir" in msg and "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_an_idx_file_with_a_broken_deflate_stream_is_a_data_error(tmp_path):
    write_fmnist(tmp_path)
    head = gzip.compress(b"")[:10]  # a valid 10-byte gzip header (no file name), then an invalid deflate block
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(head + b"\xff" * 40)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz.*corrupt"):
        build_datasets(Config(data="fashion_mnist", data_dir=str(tmp_path)), download=False)


# ================================================================================== checkpoints
def write_zip(path: Path, entries: list[tuple[str, int, int, int, bytes]]) -> None:
    """A ZIP file by hand: (name, method, crc, uncompressed size, stored payload) per entry, so that
    an entry's payload can be a deflate stream computed without compressing its data."""
    out, central = bytearray(), bytearray()
    for name, method, crc, size, payload in entries:
        n, offset = name.encode(), len(out)
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(payload), size, len(n), 0)
        out += n + payload
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(payload), size,
                               len(n), 0, 0, 0, 0, 0, offset) + n
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + end))


def deflated_zeros(n_mib: int) -> tuple[bytes, int]:
    """(raw deflate stream, crc32) of ``n_mib`` MiB of zeros: a full flush after each MiB resets the
    compressor, so every MiB compresses to the same block, computed once."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(bytes(MiB), crc)
    return block * n_mib + c.flush(), crc


def checkpoint_bomb(path: Path, n_mib: int = 1024) -> Path:
    """A real tiny ann2snn checkpoint whose tensor entry is rewritten deflated, declaring
    ``n_mib`` MiB of zeros (1 MiB of file for 1 GiB)."""
    small = path.with_name("small.pt")
    torch.save({"format": 1, "config": TINY, "model": {"w": torch.zeros(4)}}, small)
    entries = []
    with zipfile.ZipFile(small) as zf:
        for info in zf.infolist():
            payload = zf.read(info)
            if info.filename.endswith("/data/0"):
                bomb, crc = deflated_zeros(n_mib)
                entries.append((info.filename, zipfile.ZIP_DEFLATED, crc, n_mib * MiB, bomb))
            else:
                entries.append((info.filename, zipfile.ZIP_STORED, zlib.crc32(payload), len(payload), payload))
    write_zip(path, entries)
    info = zipfile.ZipFile(path).getinfo(next(e[0] for e in entries if e[0].endswith("/data/0")))
    assert info.file_size == n_mib * MiB and info.compress_size < 2 * MiB
    return path


@pytest.mark.slow
@pytest.mark.parametrize("how", ["convert", "pretrained"])
def test_a_checkpoint_zip_bomb_is_refused_before_it_is_inflated(tmp_path, how):
    bomb = checkpoint_bomb(tmp_path / "bomb.pt")
    if how == "convert":
        body = f"    sys.exit(cli.main(['convert', '--checkpoint', {str(bomb)!r}, '--out', {str(tmp_path / 'o')!r}]))"
    else:
        body = (f"    checkpoint.read_state_dict({str(bomb)!r})\n"
                "except checkpoint.CheckpointError as err:\n    print(f'ann2snn convert: error: {err}'); sys.exit(2)")
    proc = run_limited(body, headroom=512 * MiB)
    err = proc.stderr + proc.stdout
    line = assert_user_error(proc.returncode, err, "convert", str(bomb), "/data/0", f"to {1024 * MiB} bytes",
                             "compression bomb")
    assert "Pretrained weights file" in line if how == "pretrained" else "Checkpoint" in line


def test_a_checkpoint_declaring_more_than_the_memory_is_refused(tmp_path, monkeypatch, capsys):
    good = stored_config_checkpoint(tmp_path / "X.pt")
    monkeypatch.setattr(checkpoint, "available_memory", lambda: 100)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load_checkpoint(good)
    msg = str(e.value)
    assert str(good) in msg and "GiB when unpacked" in msg and "memory available (0.00 GiB)" in msg, msg
    rc, err = run_cli(capsys, ["convert", "--checkpoint", good])
    assert_user_error(rc, err, "convert", "more than half of the memory available")
    monkeypatch.setattr(checkpoint, "available_memory", lambda: 2**30)
    assert checkpoint.load_checkpoint(good)["config"]["dim"] == 16  # a real one fits


@pytest.mark.slow
def test_available_memory_follows_the_address_space_limit():
    code = ("import resource, sys; sys.path.insert(0, %r); from ann2snn.app import data; free = data.available_memory(); "
            "used = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize:')); "
            "resource.setrlimit(resource.RLIMIT_AS, (used + 2**28, used + 2**28)); "
            "print(free > 0, 0 < data.available_memory() <= 2**28)" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=SUB_ENV, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stdout + out.stderr


# ================================================================================= minor (data)
def test_a_clipped_subset_is_announced(caplog):
    with caplog.at_level(logging.WARNING, logger="ann2snn"):
        train, test, _ = build_datasets(Config(data="digits", train_subset=10**6, test_subset=30))
    assert (len(train), len(test)) == (1347, 30)
    said = [r.getMessage() for r in caplog.records if "subset" in r.getMessage()]
    assert len(said) == 1 and "train_subset is 1000000" in said[0] and "only 1347 items" in said[0], said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ann2snn"):
        build_datasets(Config(data="digits", train_subset=1347, test_subset=451))
    said = [r.getMessage() for r in caplog.records if "subset" in r.getMessage()]
    assert len(said) == 1 and "test_subset is 451" in said[0] and "only 450 items" in said[0], said


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_data_dir_is_refused(capsys, tmp_path, value):
    with pytest.raises(ConfigError, match="data_dir is empty"):
        Config(data_dir=value).validate()
    cfg = write_yaml(tmp_path / "tiny.yml", TINY)
    rc, err = run_cli(capsys, ["train", "-c", cfg, "--data_dir", value, "--out", tmp_path / "run",
                               "--out_root", tmp_path])
    assert_user_error(rc, err, "train", "data_dir is empty", "omit it to use the default locations", "--data_dir DIR")
    assert not (tmp_path / "run").exists()
    assert Config(data_dir=None).validate().data_dir is None
