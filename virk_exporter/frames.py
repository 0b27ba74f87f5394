"""Frame normalization: whatever the model was given -> uint8 RGB, shape (N, H, W, 3).

Two halves, because they run in different places:

* :func:`capture` runs on the caller's thread. It only looks at metadata (rank, dtype,
  device) and turns the input into one NumPy array without converting pixels, so the
  decorated call stays cheap. A CUDA tensor is copied to host memory here, since the
  worker process cannot read device memory.
* :func:`normalize` runs in the monitoring worker: layout (HWC/CHW, gray, alpha), value
  range, NaN checks and colour order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence, TypeVar

import numpy as np

ColorOrder = Literal["rgb", "bgr"]

_CHANNELS = (1, 3, 4)

T = TypeVar("T")


def evenly_spaced(items: Sequence[T], n: int) -> list[T]:
    """``n`` items spread evenly over ``items``, first and last included (all of them when
    there are at most ``n``): thumbnails and report frames are picked this way."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


class FrameError(ValueError):
    """An input that monitoring cannot read as image frames."""


@dataclass(frozen=True)
class Captured:
    """Frames as handed over by the caller, not yet normalized."""

    array: np.ndarray
    channels_first: bool  # a torch tensor: prefer CHW/NCHW when the shape is ambiguous


def peek(frames: Any) -> tuple[tuple[int, ...], bool]:
    """(shape, channels_first) of an input, from metadata alone: cheap enough for the caller's thread.

    A list of frames reports (len, *first frame's shape). Raises :class:`FrameError` early
    for what is clearly not frames; :func:`capture` checks the rest in the background.
    """
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise FrameError("empty list of frames")
        shape, channels_first = peek(frames[0])
        if len(shape) not in (2, 3):
            raise FrameError("a list must hold single frames (HxW, HxWxC or CxHxW)")
        return (len(frames), *shape), channels_first
    shape = getattr(frames, "shape", None)
    if shape is None or not (isinstance(frames, np.ndarray) or is_torch_tensor(frames)):
        raise FrameError(f"frames must be a NumPy array, a torch tensor or a list of them, got {type(frames).__name__}")
    shape = tuple(int(d) for d in shape)
    if len(shape) not in (2, 3, 4):
        raise FrameError(f"frames must have 2 to 4 dimensions, got shape {shape}")
    if 0 in shape:
        raise FrameError(f"empty frames, shape {shape}")
    return shape, is_torch_tensor(frames)


def capture(frames: Any) -> Captured:
    """Turn a frame or batch into one NumPy array, checking only metadata.

    Accepts NumPy arrays, torch tensors (any device) and lists/tuples of either.
    Raises :class:`FrameError` for anything else.
    """
    if isinstance(frames, Captured):
        return frames
    channels_first = False
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise FrameError("empty list of frames")
        parts = [capture(f) for f in frames]
        shapes = {p.array.shape for p in parts}
        if len(shapes) != 1:
            raise FrameError(f"frames in one list must share a shape, got {sorted(shapes)}")
        if parts[0].array.ndim not in (2, 3):
            raise FrameError("a list must hold single frames (HxW, HxWxC or CxHxW)")
        return Captured(np.stack([p.array for p in parts]), parts[0].channels_first)
    if is_torch_tensor(frames):
        channels_first = True
        frames = frames.detach()
        if frames.device.type != "cpu":
            frames = frames.cpu()
        if frames.dtype.is_floating_point and str(frames.dtype) not in _TORCH_NUMPY_FLOATS:
            frames = frames.float()  # bfloat16 and friends have no NumPy dtype
        frames = frames.numpy()
    if not isinstance(frames, np.ndarray):
        raise FrameError(f"frames must be a NumPy array, a torch tensor or a list of them, got {type(frames).__name__}")
    if frames.ndim not in (2, 3, 4):
        raise FrameError(f"frames must have 2 to 4 dimensions, got shape {frames.shape}")
    if frames.size == 0:
        raise FrameError(f"empty frames, shape {frames.shape}")
    if frames.dtype.kind not in "uf":
        raise FrameError(f"frames must be unsigned integers or floats, got dtype {frames.dtype}")
    return Captured(frames, channels_first)


def is_torch_tensor(x: Any) -> bool:
    """A torch tensor (the caller's outputs and frames, replay's predict results)."""
    # No import of torch on the caller's path: the class name is enough.
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


# Torch float dtypes NumPy has (by name: importing torch costs the caller's process ~3 s of CPU).
_TORCH_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


Layout = Literal["hw", "hwc", "chw", "nhw", "nhwc", "nchw"]


def layout_of(shape: tuple[int, ...], channels_first: bool = False) -> Layout:
    """How a frame or batch of this shape is laid out (the shape alone decides, so this is cheap)."""
    if len(shape) == 2:
        return "hw"
    if len(shape) == 3:
        last, first = shape[-1] in _CHANNELS, shape[0] in _CHANNELS
        if first and (channels_first or not last):
            return "chw"
        return "hwc" if last else "nhw"
    if len(shape) == 4:
        last, second = shape[-1] in _CHANNELS, shape[1] in _CHANNELS
        if second and (channels_first or not last):
            return "nchw"
        if last:
            return "nhwc"
        raise FrameError(f"cannot tell the channel axis of shape {tuple(shape)}: expected 1, 3 or 4 channels")
    raise FrameError(f"frames must have 2 to 4 dimensions, got shape {tuple(shape)}")


def frame_count(shape: tuple[int, ...], channels_first: bool = False) -> int:
    """Number of frames in an input of this shape."""
    return int(shape[0]) if layout_of(shape, channels_first) in ("nhw", "nhwc", "nchw") else 1


def to_nhwc(array: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """Arrange a frame or batch as (N, H, W, C) (a view: no pixel is copied)."""
    layout = layout_of(array.shape, channels_first)
    if layout == "hw":
        return array[None, :, :, None]
    if layout == "chw":
        return np.moveaxis(array, 0, -1)[None]
    if layout == "hwc":
        return array[None]
    if layout == "nhw":
        return array[..., None]
    if layout == "nchw":
        return np.moveaxis(array, 1, -1)
    return array


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale pixel values to uint8: floats in [0, 1] (or [0, 255]), uint8, uint16."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "u":
        shift = 8 * (array.dtype.itemsize - 1)
        return (array >> shift).astype(np.uint8)
    lo, hi = float(np.min(array)), float(np.max(array))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise FrameError("float frames contain NaN or infinity")
    if lo < -1e-3 or hi > 255.0 + 1e-3:
        raise FrameError(f"float frames must lie in [0, 1] (or [0, 255]); got values in [{lo:.3g}, {hi:.3g}]")
    scale = 255.0 if hi <= 1.0 + 1e-3 else 1.0
    return np.clip(array * scale + 0.5, 0, 255).astype(np.uint8)


def normalize(captured: Captured | np.ndarray, color: ColorOrder = "rgb") -> np.ndarray:
    """Return uint8 RGB frames of shape (N, H, W, 3), C-contiguous."""
    if isinstance(captured, np.ndarray):
        captured = Captured(captured, False)
    nhwc = to_nhwc(captured.array, captured.channels_first)
    if nhwc.shape[1] < 1 or nhwc.shape[2] < 1:
        raise FrameError(f"frames have no pixels, shape {captured.array.shape}")
    pixels = to_uint8(nhwc)
    channels = pixels.shape[-1]
    if channels == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    elif channels == 4:
        pixels = pixels[..., :3]
    if color == "bgr":
        pixels = pixels[..., ::-1]
    elif color != "rgb":
        raise ValueError(f"color must be 'rgb' or 'bgr', got {color!r}")
    return np.ascontiguousarray(pixels)


def normalize_any(frames: Any, color: ColorOrder = "rgb") -> np.ndarray:
    """capture + normalize in one call, for code that is not on the caller's thread."""
    return normalize(capture(frames), color)
