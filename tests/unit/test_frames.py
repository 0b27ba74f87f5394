"""Frame normalization: every accepted input form, and clear errors for the rest."""

import numpy as np
import pytest
import torch

from virk_exporter.frames import FrameError, capture, normalize, normalize_any

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)


def test_uint8_batch_nhwc_is_kept():
    out = normalize_any(RGB)
    assert out.shape == (4, 24, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


def test_single_hwc_frame_becomes_batch_of_one():
    np.testing.assert_array_equal(normalize_any(RGB[0]), RGB[:1])


def test_float_in_unit_range_scales_to_uint8():
    out = normalize_any(RGB.astype(np.float32) / 255.0)
    assert np.abs(out.astype(int) - RGB.astype(int)).max() <= 1


def test_float_in_0_255_range_is_accepted():
    np.testing.assert_array_equal(normalize_any(RGB.astype(np.float64)), RGB)


def test_uint16_keeps_the_high_byte():
    wide = RGB.astype(np.uint16) * 257
    np.testing.assert_array_equal(normalize_any(wide), RGB)


def test_grayscale_single_and_batch():
    gray = RGB[..., 0]
    single = normalize_any(gray[0])
    assert single.shape == (1, 24, 32, 3)
    np.testing.assert_array_equal(single[0, ..., 1], gray[0])
    five = np.concatenate([gray, gray[:1]])  # (5, 24, 32): N grayscale frames
    assert normalize_any(five).shape == (5, 24, 32, 3)
    # A leading axis of 1, 3 or 4 reads as channels (CHW): documented, since it is ambiguous.
    assert normalize_any(gray).shape == (1, 24, 32, 3)


def test_bgr_is_flipped_to_rgb():
    np.testing.assert_array_equal(normalize_any(RGB[..., ::-1], color="bgr"), RGB)


def test_rgba_drops_alpha():
    rgba = np.concatenate([RGB, np.full(RGB.shape[:-1] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(normalize_any(rgba), RGB)


def test_list_of_frames_is_stacked():
    np.testing.assert_array_equal(normalize_any(list(RGB)), RGB)


def test_torch_nchw_and_chw():
    nchw = torch.from_numpy(RGB).permute(0, 3, 1, 2).contiguous()
    np.testing.assert_array_equal(normalize_any(nchw), RGB)
    np.testing.assert_array_equal(normalize_any(nchw[0]), RGB[:1])
    np.testing.assert_array_equal(normalize_any(nchw.float() / 255.0), RGB)


def test_torch_bfloat16_and_requires_grad():
    t = (torch.from_numpy(RGB).permute(0, 3, 1, 2).float() / 255.0).requires_grad_(True)
    out = normalize_any(t.to(torch.bfloat16))
    assert out.shape == RGB.shape
    assert np.abs(out.astype(int) - RGB.astype(int)).max() <= 2


def test_numpy_chw_is_recognized_when_unambiguous():
    chw = np.ascontiguousarray(RGB[0].transpose(2, 0, 1))
    np.testing.assert_array_equal(normalize_any(chw), RGB[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_cuda_tensor():
    t = torch.from_numpy(RGB).permute(0, 3, 1, 2).cuda()
    np.testing.assert_array_equal(normalize_any(t), RGB)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 3, 4, 5, 3), np.uint8), "2 to 4 dimensions"),
        (np.zeros((5,), np.uint8), "2 to 4 dimensions"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.full((8, 8, 3), 1000.0, np.float32), r"\[0, 1\]"),
        (np.full((8, 8, 3), -0.5, np.float32), r"\[0, 1\]"),
        (np.zeros((8, 8, 3), np.int8), "unsigned integers or floats"),
        (np.zeros((8, 8, 3), bool), "unsigned integers or floats"),
        ([], "empty list"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], "share a shape"),
        ("not a frame", "NumPy array"),
        (np.zeros((2, 8, 8, 7), np.uint8), "channel axis"),
    ],
)
def test_rejected_inputs_say_why(bad, message):
    with pytest.raises(FrameError, match=message):
        normalize(capture(bad))


def test_unknown_color_order_is_an_error():
    with pytest.raises(ValueError, match="color"):
        normalize_any(RGB, color="hsv")
