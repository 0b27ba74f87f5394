"""Processes sharing one monitoring worker: os.fork, fork-start pools, several Exporters; start-up."""

import multiprocessing
import os
import pickle
import urllib.request

import numpy as np
import pytest

from helpers import exposition, sample_value
from virk_exporter import Exporter
from servers import wait_until
from virk_exporter.wire.transport import SESSION_BITS

FRAMES = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def frames_total(exp) -> float:
    return sample_value(exposition(exp), "virk_frames_total", model=exp.model)


@pytest.fixture
def exporter(tmp_path):
    exp = Exporter(model=f"fork-{os.getpid()}-{tmp_path.name}", store=str(tmp_path / "store"))
    assert exp.wait_ready(120)
    yield exp
    exp.close()


@pytest.mark.slow
def test_an_os_fork_child_is_monitored_and_exits_without_hanging(exporter):
    """The child re-creates its hand-off thread, attaches as a session of its own (new frame
    ids), its frames reach the shared worker, and the parent's HTTP server does not hang its exit."""
    server = exporter.serve(port=0)
    predict = exporter.monitor(lambda frames: np.eye(3)[: len(frames)])
    predict(FRAMES)
    parent_ids = exporter.last_frame_ids()
    exporter.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its ids, processed count and metrics, then exit
        code = 1
        try:
            for _ in range(4):
                predict(FRAMES)
            ids = exporter.last_frame_ids()
            exporter.flush(timeout=60)
            status = exporter.request("status")
            exporter.close()
            os.write(write, pickle.dumps((ids, status["frames_processed"])))
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)  # a hang here is the bug (pytest-timeout fails the test)
    assert os.waitstatus_to_exitcode(status) == 0
    child_ids, processed = pickle.loads(os.read(read, 1 << 16))
    os.close(read)
    assert child_ids.start >> SESSION_BITS != parent_ids.start >> SESSION_BITS, "frame ids must be unique across processes"
    assert processed == 3 + 12, "the child's frames reach the shared worker"
    assert frames_total(exporter) == 15, "the parent's scrape counts the child's frames (after it exited)"
    with urllib.request.urlopen(f"{server.url}/-/ready", timeout=5) as reply:  # the parent still serves
        assert reply.status == 200


_POOL: dict = {}


def _pool_task(i: int) -> int:
    _POOL["predict"](FRAMES)
    return os.getpid()


@pytest.mark.slow
def test_a_fork_start_pool_child_is_monitored(exporter):
    _POOL["predict"] = exporter.monitor(lambda frames: None)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pids = set(pool.map(_pool_task, range(8), chunksize=1))
        pool.close()
        pool.join()  # children exit through multiprocessing's finalizers: they drain there
    assert os.getpid() not in pids
    assert frames_total(exporter) == 8 * len(FRAMES)
    exporter.flush()
    assert exporter.request("status")["frames_processed"] == 8 * len(FRAMES)


@pytest.mark.slow
def test_exporters_with_the_same_settings_share_one_worker(tmp_path):
    settings = dict(model=f"shared-{os.getpid()}", store=str(tmp_path / "store"))
    with Exporter(**settings) as a, Exporter(**settings) as b:
        assert a.wait_ready(120) and b.wait_ready(120)
        assert a._worker.pid == b._worker.pid
        for exp in (a, b):
            exp.monitor(lambda frames: None)(FRAMES)
        assert a.last_frame_ids().start >> SESSION_BITS != b.last_frame_ids().start >> SESSION_BITS
        a.flush()
        b.flush()
        assert a.request("status")["frames_processed"] == 2 * len(FRAMES)
        assert frames_total(a) == frames_total(b) == 2 * len(FRAMES)


@pytest.mark.slow
def test_a_label_recorded_in_another_process_is_scored_by_the_issuing_one(tmp_path):
    settings = dict(model=f"routed-{os.getpid()}", store=str(tmp_path / "store"))
    with Exporter(**settings) as issuer, Exporter(**settings) as other:
        assert issuer.wait_ready(120) and other.wait_ready(120)
        predict = issuer.monitor(lambda frames: np.eye(3)[: len(frames)])  # predicts 0, 1, 2
        predict(FRAMES)
        ids = list(issuer.last_frame_ids())
        issuer.flush()
        other.record_labels(ids, [0, 1, 0])  # where a label request lands: any process
        other.flush()

        def outcomes(exp):
            text = exposition(exp)
            return {o: sample_value(text, "virk_labels_total", outcome=o) for o in ("correct", "incorrect", "expired", "unknown")}

        wait_until(lambda: outcomes(issuer)["correct"] == 2 and outcomes(issuer)["incorrect"] == 1, 10, what="routed labels scored")
        issuer.close()
        other.record_label(ids[0], 0)  # its process has gone (and its ledger with it)
        other.record_label(ids[0] + (1000 << SESSION_BITS), 0)  # no process ever had this id
        other.flush()
        wait_until(lambda: outcomes(other)["expired"] == 1 and outcomes(other)["unknown"] == 1, 10, what="unroutable labels counted")
        assert outcomes(other)["correct"] == 2, "the closed process's counts stay in the totals"


@pytest.mark.slow
def test_frames_sent_before_the_worker_is_ready_are_held_or_dropped_as_not_started(tmp_path):
    with Exporter(model=f"early-{os.getpid()}", store=str(tmp_path / "store"), queue_batches=4) as exp:
        predict = exp.monitor(lambda frames: None)
        assert not exp.ready  # a fresh worker is still importing its analysis
        for _ in range(20):
            predict(FRAMES[:1])
            exp._handoff.drain(10)  # as calls a few ms apart would: the hand-off thread keeps up
        text = exposition(exp)  # answers while the worker starts (caller-side families)
        assert sample_value(text, "virk_frames_total") == 20
        assert exp.wait_ready(120)
        exp.flush()
        text = exposition(exp)
        held = exp.request("status")["frames_processed"]
        assert sample_value(text, "virk_frames_dropped_total", reason="queue_full") == 0
        assert held >= 1 and held + sample_value(text, "virk_frames_dropped_total", reason="not_started") == 20
