"""The suite's shared setup.

Layout: ``tests/unit`` runs in this process only (no server, no subprocess, no worker);
``tests/integration`` starts real things (the monitoring worker, Prometheus, Alertmanager,
SeaweedFS, Chromium, gunicorn/uvicorn). Each test under ``tests/integration`` gets the
``integration`` marker here; tests that take more than about 5 s carry ``@pytest.mark.slow``.

The suite runs in parallel (pytest-xdist): everything a test shares with other processes on
the host is made private to its pytest process here (rendezvous directory) or per test
(store, spool); servers listen on free ports.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
# Tests import the helpers next to this file (servers.py, helpers.py, ...) and a few import the
# fakes of another test module, which may sit in the other folder.
for _folder in (TESTS, TESTS / "unit", TESTS / "integration"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))


def pytest_configure(config):
    """A private rendezvous directory per pytest process (each xdist worker has its own).

    Exporters with the same model and settings share one monitoring worker through a socket in
    ``$VIRK_RUNTIME_DIR``; two pytest processes using the default directory would attach to each
    other's workers. Set in ``os.environ`` so that subprocesses (servers, apps) inherit it; a
    test that needs its own directory still sets it for its subprocess. Short (under /tmp): a
    Unix socket path has at most 107 bytes. It is left behind (a few empty files): a worker
    still exiting after the session needs its lock file.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Several pytest processes share the cores: torch's and OpenMP's default of one thread
        # per core makes them spin against each other (numerical tests ran 10x slower).
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(variable, "1")
    os.environ["VIRK_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="virk-rt-", dir="/tmp")


def pytest_collection_modifyitems(config, items):
    integration = TESTS / "integration"
    for item in items:
        if integration in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _store_in_tmp(tmp_path, monkeypatch):
    """Bundles of tests that do not name a store land in the test's own directory."""
    monkeypatch.setenv("VIRK_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("VIRK_SPOOL_DIR", str(tmp_path / "virk-spool"))  # S3 spool and intake journal


@pytest.fixture
def one_torch_thread():
    """Run torch single-threaded, as the worker does; on a 2-core box threads only add contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
