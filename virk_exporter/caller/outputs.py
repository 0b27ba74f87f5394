"""What monitoring keeps of a model's output: per-frame scores and a short summary."""

from __future__ import annotations

from typing import Any

import numpy as np

from virk_exporter.frames import is_torch_tensor

MAX_OUTPUT_VALUES = 65536  # per batch; larger outputs are summarized, not copied


def to_numpy(value: Any) -> np.ndarray | None:
    """A NumPy view/copy of an array or torch tensor; None for anything else."""
    if isinstance(value, np.ndarray):
        return value
    if is_torch_tensor(value):
        tensor = value.detach()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.cpu().numpy()
    return None


def output_rows(result: Any, n: int) -> np.ndarray | None:
    """Per-frame numeric outputs (class scores, logits) small enough to hand to the worker."""
    array = to_numpy(result)
    if array is None or array.ndim not in (1, 2) or array.shape[0] != n or array.size > MAX_OUTPUT_VALUES:
        return None
    if array.dtype.kind not in "fiu":
        return None
    return np.ascontiguousarray(array.reshape(n, -1), dtype=np.float32)


def output_summary(result: Any, error: BaseException | None) -> dict[str, Any]:
    """Type and shape of what the function returned (or the exception it raised)."""
    if error is not None:
        return {"error": type(error).__name__}
    shape = getattr(result, "shape", None)
    if shape is not None:
        return {"type": type(result).__name__, "shape": [int(s) for s in shape]}
    if isinstance(result, (list, tuple)):
        return {"type": type(result).__name__, "len": len(result)}
    return {"type": type(result).__name__}
