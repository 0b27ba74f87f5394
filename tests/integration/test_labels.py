"""Late labels: frame ids handed back, labels scored against the prediction ledger, metrics."""

import asyncio
import threading

import numpy as np
import pytest
import torch

from helpers import exposition, sample_value
from virk_exporter import Exporter
from virk_exporter.caller.labels import predictions_of

FRAME = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
WINDOW = 20
MEMORY = 64


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    exp = Exporter(model="labels", store=str(tmp_path_factory.mktemp("store")), label_memory=MEMORY, label_window=WINDOW)
    assert exp.wait_ready(120)
    yield exp
    exp.close()


def metric(exp, name, **labels):
    return sample_value(exposition(exp), name, model=exp.model, **labels)


def test_predictions_of_common_outputs():
    assert predictions_of(np.array([[0.1, 0.9], [0.8, 0.2]]), 2) == [1, 0]
    assert predictions_of(torch.tensor([[0.1, 0.9, 0.0]]), 1) == [1]
    assert predictions_of(np.array([3, 4]), 2) == [3, 4]
    assert predictions_of(["cat", "dog"], 2) == ["cat", "dog"]
    assert predictions_of({"boxes": 1}, 1) is None and predictions_of(np.zeros((2, 1)), 2) is None
    assert predictions_of(np.zeros((2, 3)), 2, predicted=lambda r: ["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError):
        predictions_of(np.zeros((2, 3)), 2, predicted=lambda r: ["a"])


def test_accuracy_matches_a_hand_computation_with_delayed_labels(exporter):
    """Two cameras, batches of 3, labels arriving 5 calls late and out of order."""
    rng = np.random.default_rng(0)

    @exporter.monitor(source=lambda frames, camera: camera)
    def predict(frames, camera):
        scores = np.zeros((len(frames), 4), np.float32)
        scores[np.arange(len(frames)), rng.integers(0, 4, len(frames))] = 1.0
        return scores

    calls, expected = [], {"cam-a": [], "cam-b": []}
    for step in range(40):
        camera = "cam-a" if step % 3 else "cam-b"
        scores = predict(np.stack([FRAME] * 3), camera=camera)
        ids = exporter.last_frame_ids()
        assert len(ids) == 3
        truth = [int(np.argmax(s)) if rng.random() < 0.7 else 9 for s in scores]
        calls.append((ids, truth, camera))
        if step >= 5:  # the labels of the call 5 steps back, last frame first
            old_ids, old_truth, old_camera = calls[step - 5]
            pairs = list(zip(old_ids, old_truth))[::-1]
            exporter.record_labels([p[0] for p in pairs], [p[1] for p in pairs])
            for fid, label in pairs:
                expected[old_camera].append(label != 9)
    exporter.flush()
    for camera, outcomes in expected.items():
        assert metric(exporter, "virk_labels_total", source=camera, outcome="correct") == sum(outcomes)
        assert metric(exporter, "virk_labels_total", source=camera, outcome="incorrect") == len(outcomes) - sum(outcomes)
        assert metric(exporter, "virk_label_accuracy_ratio", source=camera) == pytest.approx(np.mean(outcomes[-WINDOW:]))


def test_evicted_unknown_duplicate_and_unscorable_labels_are_counted(exporter):
    @exporter.monitor(source=lambda frames: "cam-e")
    def classify(frames):
        return np.array([[0.0, 1.0]] * len(frames))

    @exporter.monitor(source=lambda frames: "cam-e")
    def describe(frames):
        return {"not": "scores"}

    classify(FRAME[None])
    old = exporter.last_frame_ids()[0]
    for _ in range(MEMORY + 1):  # the ledger keeps MEMORY frames: `old` is overwritten
        classify(FRAME[None])
    recent = exporter.last_frame_ids()[0]
    describe(FRAME[None])
    unscorable = exporter.last_frame_ids()[0]

    @exporter.monitor(source=lambda frames: "cam-e")
    def crash(frames):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError):
        crash(FRAME[None])
    crashed = exporter.last_frame_ids()[0]
    before = {o: metric(exporter, "virk_labels_total", outcome=o) for o in ("expired", "unknown", "duplicate", "no_prediction", "correct")}
    exporter.record_label(old, 1)  # evicted long ago: counted as expired, never raises
    exporter.record_label(recent, 1)
    exporter.record_label(recent, 0)  # a second label for the same frame: the first one counts
    exporter.record_label(unscorable, 1)
    exporter.record_label(crashed, 1)
    for bogus in (10**12, -5, "not-an-id", None):
        exporter.record_label(bogus, 1)
    exporter.record_labels([1, 2], [1])  # mismatched lengths: a counted monitoring error
    exporter.flush()
    after = {o: metric(exporter, "virk_labels_total", outcome=o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"expired": 1, "unknown": 4, "duplicate": 1, "no_prediction": 2, "correct": 1}
    assert metric(exporter, "virk_labels_total", outcome="expired", source="unknown") >= 1
    assert metric(exporter, "virk_errors_total", stage="labels") >= 1


def test_a_label_right_after_the_call_waits_for_its_frame(exporter):
    """The caller labels immediately, before the hand-off thread has accounted the call."""

    @exporter.monitor(source=lambda frames: "cam-fast", predicted=lambda scores: ["dog" if s[1] > s[0] else "cat" for s in scores])
    def predict(frames):
        return np.array([[0.2, 0.8]] * len(frames))

    for _ in range(30):
        predict(np.stack([FRAME] * 2))
        ids = exporter.last_frame_ids()
        exporter.record_labels({ids[0]: "dog", ids[1]: "cat"})
    exporter.flush()
    assert metric(exporter, "virk_labels_total", source="cam-fast", outcome="correct") == 30
    assert metric(exporter, "virk_labels_total", source="cam-fast", outcome="incorrect") == 30
    assert metric(exporter, "virk_label_accuracy_ratio", source="cam-fast") == 0.5


def test_frame_ids_are_per_thread_and_per_task_and_match_the_recorder(exporter):
    @exporter.monitor(source=lambda frames, camera: camera)
    def predict(frames, camera):
        return np.zeros((1, 2))

    got: dict[str, list[int]] = {}

    def worker(camera):
        got[camera] = []
        for _ in range(20):
            predict(FRAME, camera=camera)
            got[camera].append(exporter.last_frame_ids()[0])

    threads = [threading.Thread(target=worker, args=(f"thr-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    @exporter.monitor(source=lambda frames, camera: camera)
    async def apredict(frames, camera):
        await asyncio.sleep(0.001)
        return np.zeros((1, 2))

    async def task(camera):
        ids = []
        for _ in range(5):
            await apredict(FRAME, camera=camera)
            ids.append(exporter.last_frame_ids()[0])
        got[camera] = ids

    async def main():
        await asyncio.gather(*(task(f"task-{i}") for i in range(3)))

    asyncio.run(main())
    exporter.flush()
    all_ids = [i for ids in got.values() for i in ids]
    assert len(set(all_ids)) == len(all_ids) == 95
    recorded = {f.frame_id: f.source for f in exporter.request("snapshot")}
    # (a burst may shed a few frames under load: those are counted, not recorded)
    assert sum(i in recorded for i in all_ids) >= len(all_ids) // 2
    for camera, ids in got.items():
        assert all(recorded.get(i, camera) == camera for i in ids), camera


def test_unreadable_input_hands_back_no_ids(exporter):
    @exporter.monitor
    def predict(frames):
        return None

    predict(FRAME)
    assert len(exporter.last_frame_ids()) == 1
    predict("not a frame")
    assert exporter.last_frame_ids() == range(0)
