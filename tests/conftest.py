"""Shared test setup: one torch thread, the hypothesis profile, and the shared fixtures.

The test machine has 2 cores shared with other jobs; torch's default intra-op pool oversubscribes
them (measured: a 60-step simulation of a tiny transformer took 27 s with 2 threads under load and
0.3 s with 1), so every test runs single-threaded.

Two kinds of test (``setup.cfg`` registers the marker): most are unit tests of a second or less;
those marked ``slow`` (training end to end, subprocesses, memory-limited children, large
torchvision models, the fuzzer) take longer.  ``make test-fast`` (``pytest -m "not slow"``) runs
the others in about a minute before a commit; ``make test`` (and CI) runs all of them.

Fixtures here: ``offline`` (modules that run the CLI use it: no download ever starts), ``tiny_run``
(one trained run for the whole session, for tests that only read it) and ``qcfs_transformer``.
The plain helpers they and the test modules use are in ``helpers.py``.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also inherited by subprocesses started by tests

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from torch import nn  # noqa: E402

from helpers import TINY, small_transformer, snapshot, write_yaml  # noqa: E402

torch.set_num_threads(1)

settings.register_profile("ann2snn", deadline=None, max_examples=60, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ann2snn")


@pytest.fixture
def qcfs_transformer() -> nn.Module:
    return small_transformer()


@pytest.fixture
def offline(monkeypatch, tmp_path_factory):
    """No downloads, and no Fashion-MNIST from the system folder: missing data stays missing.
    A module that runs the CLI on datasets it may not have says
    ``pytestmark = pytest.mark.usefixtures("offline")``."""
    from ann2snn.app import data
    from ann2snn.app.data import DataError

    def no_download(fn, root, not_found):
        raise DataError(f"{not_found} Downloading it into {str(root)!r} failed (offline test).")

    monkeypatch.setattr(data, "_download", no_download)
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path_factory.getbasetemp() / "no-fmnist"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished 1-epoch run of ``helpers.TINY``, trained once per session: ``{"base": its
    out_root (holding LATEST), "cfg": its config file, "run": its folder, "best": its
    best_model.pt}``.

    Read-only: a test that changes the run (resumes, extends, corrupts it) works on
    ``helpers.copy_run(tiny_run["run"], tmp_path)``; so does one whose command writes its results
    into the run's folder by default.  At the end of the session the folder is compared with what
    was trained, so that a test that wrote into it fails here rather than another test later."""
    from ann2snn.app import cli

    base = tmp_path_factory.mktemp("tiny")
    cfg = write_yaml(base / "tiny.yml", TINY)
    torch.set_num_threads(1)
    assert cli.main(["train", "-c", str(cfg), "--out", str(base / "run"), "--out_root", str(base)]) == 0
    trained = snapshot(base)
    yield {"base": base, "cfg": cfg, "run": base / "run", "best": base / "run" / "best_model.pt"}
    now = snapshot(base)
    changed = sorted(k for k in trained.keys() | now.keys() if trained.get(k) != now.get(k))
    assert not changed, (f"a test changed the shared tiny run ({changed[:5]}); give it a copy "
                         "(helpers.copy_run) instead")
