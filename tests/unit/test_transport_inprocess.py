"""The caller→worker hand-off in one process: the arena and socket round trip (typed BatchInfo
and arrays arrive intact, space is released, a full queue drops instead of blocking) and the
hand-off thread (order, drain, a full queue refuses)."""

from __future__ import annotations

import socket
import threading
from multiprocessing.connection import Connection

import numpy as np

from virk_exporter.caller.handoff import Handoff
from virk_exporter.wire.transport import Arena, Arrays, BatchInfo, FrameConsumer, FrameProducer, socket_pair, split_batch


def pair(data_bytes: int = 1 << 20, max_batches: int = 8) -> tuple[FrameProducer, FrameConsumer, Arena]:
    arena = Arena.create(data_bytes)
    ours, theirs = socket_pair()
    return FrameProducer(arena, ours, max_batches), FrameConsumer(arena, Connection(theirs.detach())), arena


def info(n: int, **extra) -> BatchInfo:
    return BatchInfo(frame_ids=list(range(n)), sources=["cam"] * n, timestamp=1.5, color="bgr", channels_first=False, **extra)


def test_a_batch_crosses_the_arena_with_its_info_outputs_and_features():
    producer, consumer, arena = pair()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, size=(3, 12, 16, 3), dtype=np.uint8)
    outputs = rng.normal(size=(3, 5)).astype(np.float32)
    features = rng.normal(size=(3, 7))
    sent = info(3, tags=[{"site": "a"}, {}, {"site": "b"}], function="app:predict", trace_id="ab" * 16, span_id="cd" * 8)
    assert producer.try_put(Arrays(frames, outputs, features), sent) is None
    assert producer.depth() == 1
    received, arrays = consumer.receive()
    assert received == sent
    np.testing.assert_array_equal(arrays.frames, frames)
    np.testing.assert_array_equal(arrays.outputs, outputs)
    np.testing.assert_array_equal(arrays.features, features)
    assert arrays.features.dtype == features.dtype and producer.depth() == 0
    producer.send_close({"frames": 3})
    assert consumer.receive() is None and consumer.last_words == {"frames": 3}
    arena.close()


def test_a_full_queue_or_an_oversized_batch_drops_and_the_ring_wraps():
    producer, consumer, arena = pair(data_bytes=1 << 16, max_batches=2)
    small = np.zeros((1, 32, 32, 3), np.uint8)  # 3 KiB
    assert producer.try_put(Arrays(np.zeros((1, 128, 128, 3), np.uint8)), info(1)) == "batch_too_large"
    assert producer.try_put(Arrays(small), info(1)) is None
    assert producer.try_put(Arrays(small), info(1)) is None
    assert producer.try_put(Arrays(small), info(1)) == "queue_full"
    for round_ in range(40):  # ~120 KiB through a 64 KiB ring: it wraps and stays consistent
        consumer.receive()
        frame = np.full((1, 32, 32, 3), round_, np.uint8)
        assert producer.try_put(Arrays(frame), info(1)) is None
    consumer.receive()
    _, last = consumer.receive()
    assert int(last.frames[0, 0, 0, 0]) == 39
    arena.close()


def test_the_handoff_thread_keeps_order_drains_and_refuses_when_full():
    seen: list[int] = []
    gate = threading.Event()

    def process(item: int) -> None:
        gate.wait(5)
        seen.append(item)

    errors: list[str] = []
    handoff = Handoff(process, lambda stage, problem: errors.append(stage), max_pending=3)
    handoff.start()
    accepted = [handoff.submit(i) for i in range(6)]
    assert accepted.count(True) >= 3 and accepted[-1] is False  # never blocks: the rest is refused
    gate.set()
    assert handoff.drain(5)
    assert seen == [i for i, ok in enumerate(accepted) if ok] and errors == []
    handoff.close(5)


def test_a_batch_larger_than_one_message_crosses_in_pieces_with_its_rows_and_tags():
    producer, consumer, arena = pair(data_bytes=1 << 18, max_batches=16)  # one message: 64 KiB
    frames = np.arange(8 * 64 * 64 * 3, dtype=np.uint32).astype(np.uint8).reshape(8, 64, 64, 3)  # 12 KiB a frame
    frames[:, 0, 0, 0] = np.arange(8)
    outputs = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    batch = info(8, tags=[{"i": str(i)} for i in range(8)])
    assert producer.try_put(Arrays(frames, outputs), batch) == "batch_too_large"
    pieces = split_batch(Arrays(frames, outputs), batch, producer.max_batch_bytes)
    assert len(pieces) == 2
    for piece, piece_info in pieces:
        assert producer.try_put(piece, piece_info) is None
    ids, tags, firsts, rows = [], [], [], []
    for _ in pieces:
        got_info, arrays = consumer.receive()
        ids += got_info.frame_ids
        tags += got_info.tags
        firsts += arrays.frames[:, 0, 0, 0].tolist()
        rows += arrays.outputs[:, 0].tolist()
        assert got_info.timestamp == 1.5 and got_info.color == "bgr"
    assert ids == list(range(8)) and firsts == list(range(8)) and rows == outputs[:, 0].tolist()
    assert tags == [{"i": str(i)} for i in range(8)]
    single = split_batch(Arrays(frames[:1]), info(1), producer.max_batch_bytes)
    assert len(single) == 1 and single[0][1].frame_ids == [0]
    arena.close()
