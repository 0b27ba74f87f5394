"""Small torch helpers shared by the drift detectors and the embedders."""

from __future__ import annotations

import numpy as np
import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor(x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A contiguous ``dtype`` tensor on ``device`` (no copy when it already is one)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(device=device, dtype=dtype).contiguous()


def seed_or_random(seed: int | None) -> int:
    """``seed`` itself, or fresh OS entropy folded into a non-negative 62-bit int."""
    if seed is not None:
        return int(seed)
    return int(np.random.SeedSequence().entropy % (1 << 62))
