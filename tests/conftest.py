import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import servers.py and helpers.py


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
