"""The decorator: return values, exceptions, async, methods, concurrency, load shedding."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from helpers import exposition, sample_value
from virk_exporter import Exporter

FRAME = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    exp = Exporter(model="unit", store=str(tmp_path_factory.mktemp("store")), recorder_bytes=2 * 2**20)
    assert exp.wait_ready(120)
    yield exp
    exp.close()


def counter(exp, name, **labels):
    return sample_value(exposition(exp), name, model=exp.model, **labels)


def test_return_value_is_untouched(exporter):
    sentinel = object()

    @exporter.monitor
    def predict(frames):
        return sentinel

    assert predict(FRAME) is sentinel


def test_exceptions_pass_through_unchanged(exporter):
    class ModelCrash(Exception):
        pass

    error = ModelCrash("boom")

    @exporter.monitor
    def predict(frames):
        raise error

    with pytest.raises(ModelCrash) as caught:
        predict(FRAME)
    assert caught.value is error
    assert caught.value.__traceback__ is not None


def test_async_functions_and_methods(exporter):
    class Model:
        def __init__(self):
            self.scale = 2

        @exporter.monitor
        def predict(self, frames, threshold=0.5):
            return self.scale * len(frames)

        @exporter.monitor
        async def apredict(self, frames):
            await asyncio.sleep(0)
            return "async-ok"

    model = Model()
    assert model.predict([FRAME, FRAME]) == 4
    assert asyncio.run(model.apredict(FRAME)) == "async-ok"
    assert asyncio.iscoroutinefunction(Model.apredict)
    assert Model.predict.__name__ == "predict"


def test_frames_are_counted_per_source_and_recorded(exporter):
    @exporter.monitor(source=lambda frames, camera_id=None, **kw: camera_id)
    def predict(frames, camera_id=None):
        return torch.zeros(len(frames), 5)

    before = counter(exporter, "virk_frames_total", source="cam-7")
    for _ in range(5):
        predict(np.stack([FRAME] * 3), camera_id="cam-7")
    exporter.flush()
    assert counter(exporter, "virk_frames_total", source="cam-7") - before == 15
    recorded = [f for f in exporter.request("snapshot") if f.source == "cam-7"]
    assert len(recorded) >= 15
    last = recorded[-1]
    assert last.decode().shape == (48, 64, 3)
    assert last.output["shape"] == [3, 5] and last.output["top_class"] == 0
    ids = [f.frame_id for f in recorded]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_per_frame_sources_in_one_batch(exporter):
    @exporter.monitor(source=lambda frames, **kw: ["left", "right"])
    def predict(frames):
        return None

    before = counter(exporter, "virk_frames_total", source="left"), counter(exporter, "virk_frames_total", source="right")
    predict(np.stack([FRAME, FRAME]))
    exporter.flush()
    after = counter(exporter, "virk_frames_total", source="left"), counter(exporter, "virk_frames_total", source="right")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_unreadable_input_counts_an_error_and_predict_still_runs(exporter):
    @exporter.monitor
    def predict(frames):
        return "ran"

    before = counter(exporter, "virk_errors_total", stage="input")
    assert predict("not an image") == "ran"
    assert predict(np.zeros((0, 8, 8, 3), np.uint8)) == "ran"
    exporter.flush()
    assert counter(exporter, "virk_errors_total", stage="input") - before == 2


def test_nan_frames_are_a_worker_error_not_a_caller_error(exporter):
    @exporter.monitor
    def predict(frames):
        return "ran"

    before = counter(exporter, "virk_errors_total", stage="normalize")
    assert predict(np.full((8, 8, 3), np.nan, np.float32)) == "ran"
    exporter.flush()
    assert counter(exporter, "virk_errors_total", stage="normalize") - before == 1


def test_a_failing_monitoring_stage_leaves_predict_working(exporter):
    @exporter.monitor
    def predict(frames):
        return 42

    before = counter(exporter, "virk_errors_total", stage="record")
    exporter.request("fail_stage", "record")
    try:
        assert [predict(FRAME) for _ in range(3)] == [42, 42, 42]
        exporter.flush()
    finally:
        exporter.request("fail_stage", None)
    assert counter(exporter, "virk_errors_total", stage="record") - before == 3


def test_concurrent_callers_count_every_frame(exporter):
    @exporter.monitor(source=lambda frames, **kw: "concurrency")
    def predict(frames):
        return len(frames)

    threads, calls = 8, 60
    before = counter(exporter, "virk_frames_total", source="concurrency")

    def run():
        for i in range(calls):
            predict([FRAME] * (1 + i % 2))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers), "deadlock"
    exporter.flush()  # counting happens on the hand-off thread, a moment after each call
    expected = threads * sum(1 + i % 2 for i in range(calls))
    assert counter(exporter, "virk_frames_total", source="concurrency") - before == expected
    exporter.flush()


def test_sampling_every_nth_and_rate(exporter):
    @exporter.monitor(source=lambda frames, **kw: "every-3rd", sample=3)
    def every_third(frames):
        return None

    for _ in range(30):
        every_third(FRAME)
    exporter.flush()
    assert counter(exporter, "virk_frames_sampled_total", source="every-3rd") == 10
    assert counter(exporter, "virk_frames_total", source="every-3rd") == 30

    @exporter.monitor(source=lambda frames, **kw: "rate", sample=0.25)
    def quarter(frames):
        return None

    for _ in range(400):
        quarter(FRAME)
    exporter.flush()
    assert 50 <= counter(exporter, "virk_frames_sampled_total", source="rate") <= 150
    with pytest.raises(ValueError):
        exporter.monitor(sample=0)


@pytest.mark.slow
def test_source_cardinality_is_capped(tmp_path):
    with Exporter(model="cap", store=str(tmp_path), max_sources=3) as exp:

        @exp.monitor(source=lambda frames, cam: cam)
        def predict(frames, cam):
            return None

        for cam in range(10):
            predict(FRAME, cam=f"c{cam}")
        exp.flush()
        text = exposition(exp)
        sources = {s for s in ("c0", "c1", "c2", "c3", "other") if sample_value(text, "virk_frames_total", source=s)}
        assert sources == {"c0", "c1", "c2", "other"}
        assert sample_value(text, "virk_frames_total", source="other") == 7


@pytest.mark.slow
def test_two_exporters_in_one_process_do_not_collide(tmp_path):
    with Exporter(model="a", store=str(tmp_path / "a")) as a, Exporter(model="b", store=str(tmp_path / "b")) as b:

        @a.monitor
        def pa(frames):
            return 1

        @b.monitor
        def pb(frames):
            return 2

        pa(FRAME)
        pb(FRAME)
        pb(FRAME)
        a.flush()
        b.flush()
        assert sample_value(exposition(a), "virk_frames_total", model="a") == 1
        assert sample_value(exposition(b), "virk_frames_total", model="b") == 2
        assert sample_value(exposition(a), "virk_frames_total", model="b") == 0


@pytest.mark.slow
def test_full_queue_drops_and_counts_without_blocking(tmp_path):
    with Exporter(model="shed", store=str(tmp_path), queue_batches=4) as exp:
        assert exp.wait_ready(120)

        @exp.monitor
        def predict(frames):
            return None

        exp.request("pause", 2.0)  # the worker stalls; its queue fills
        time.sleep(0.1)
        durations = []
        for _ in range(60):
            started = time.perf_counter()
            predict(FRAME)
            durations.append(time.perf_counter() - started)
        assert max(durations) < 0.1, "a full queue must never block the caller"
        exp.flush(timeout=30)
        text = exposition(exp)
        dropped = sample_value(text, "virk_frames_dropped_total", reason="queue_full")
        sampled = sample_value(text, "virk_frames_sampled_total")
        processed = exp.request("status")["frames_processed"]
        assert dropped > 0
        assert dropped + processed == sampled == 60


@pytest.mark.slow
def test_recorder_never_exceeds_its_byte_bound(tmp_path):
    bound = 300_000
    noisy = np.random.default_rng(2).integers(0, 256, (20, 120, 160, 3), dtype=np.uint8)  # JPEG-hostile
    with Exporter(model="bound", store=str(tmp_path), recorder_bytes=bound) as exp:

        @exp.monitor
        def predict(frames):
            return None

        for _ in range(5):
            predict(noisy)
        exp.flush()
        status = exp.request("status")
        assert 0 < status["recorder_bytes"] <= bound
        assert status["recorder_frames"] < 100  # old frames were evicted
        frames = exp.request("snapshot")
        assert sum(f.nbytes for f in frames) <= bound
        text = exposition(exp)
        assert 0 < sample_value(text, "virk_recorder_bytes") <= bound


@pytest.mark.slow
def test_close_drains_and_is_idempotent(tmp_path):
    exp = Exporter(model="drain", store=str(tmp_path))

    @exp.monitor
    def predict(frames):
        return "still works"

    for _ in range(10):
        predict(FRAME)
    exp.close(timeout=60)
    exp.close()
    assert predict(FRAME) == "still works"  # after close the function is just the function


@pytest.mark.slow
def test_a_crashed_worker_is_replaced_and_predict_never_notices(tmp_path):
    import os
    import signal

    with Exporter(model="crash", store=str(tmp_path)) as exp:
        assert exp.wait_ready(120)

        @exp.monitor
        def predict(frames):
            return "ok"

        predict(FRAME)
        exp.flush()
        os.kill(exp._worker.pid, signal.SIGKILL)
        exp._worker._started.wait(timeout=10)
        assert [predict(FRAME) for _ in range(5)] == ["ok"] * 5
        exp._handoff.drain(10)
        assert exp.wait_ready(120), "a new worker should have started"
        predict(FRAME)
        exp.flush()
        assert exp.request("status")["frames_processed"] >= 1
        text = exposition(exp)
        assert sample_value(text, "virk_frames_dropped_total", reason="worker_down") >= 1
        assert sample_value(text, "virk_errors_total", stage="worker") == 1


def test_input_forms_through_the_decorator_are_recorded_as_rgb(exporter):
    """Tensors (NCHW float), grayscale, BGR and lists reach the recorder as the same RGB pixels."""
    from virk_exporter.demo import photos

    rgb = photos.camera_stream(photos.load("coffee"), 2, size=(48, 64), seed=5)  # smooth enough for JPEG

    @exporter.monitor(source=lambda frames, form: form)
    def predict(frames, form):
        return None

    bgr_exporter_view = exporter.monitor(source=lambda frames, form: form, color="bgr")(lambda frames, form: None)
    predict(torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0, form="nchw-float")
    predict(list(rgb), form="list")
    predict(rgb[..., 0], form="gray")  # (2, 48, 64): two grayscale frames
    bgr_exporter_view(np.ascontiguousarray(rgb[..., ::-1]), form="bgr")
    exporter.flush()
    recorded = {}
    for frame in exporter.request("snapshot"):
        recorded.setdefault(frame.source, []).append(frame)
    for form in ("nchw-float", "list", "bgr"):
        decoded = np.stack([f.decode() for f in recorded[form][-2:]])
        assert decoded.shape == rgb.shape
        assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 8, form  # JPEG q90
    gray = np.stack([f.decode() for f in recorded["gray"][-2:]])
    assert np.abs(gray[..., 1].astype(int) - rgb[..., 0].astype(int)).mean() < 8


@pytest.mark.slow
def test_a_saved_reference_is_used_at_once_and_bad_ones_fail_at_construction(tmp_path):
    from virk_exporter.demo import photos
    from virk_exporter.embed.embedders import RandomConvEncoder
    from virk_exporter.reference.build import build_reference

    clean = photos.camera_stream(photos.load("coffee"), 48, size=(120, 160), seed=1)
    path = build_reference(clean[:32], RandomConvEncoder(), progress=False).save(tmp_path / "ref.virkref")
    with Exporter(model="saved-ref", reference=path, store=str(tmp_path / "s"), reference_period_s=0, window=16, test_every=16) as exp:

        @exp.monitor
        def predict(frames):
            return None

        predict(clean[32:])  # 16 frames: one test, no learning phase
        exp.flush()
        source = exp.request("status")["sources"]["default"]
        assert source["phase"] == "watching" and source["p_value"] is not None

    with pytest.raises(FileNotFoundError, match="does not exist"):
        Exporter(model="x", reference=tmp_path / "missing.virkref", start=False)
    (tmp_path / "bad.virkref").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a .virkref"):
        Exporter(model="x", reference=tmp_path / "bad.virkref", start=False)
