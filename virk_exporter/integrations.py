"""Wiring real models in: features from the model's own layers, and box statistics for detectors.

A detector's output is boxes, not class scores, so what is its "embedding"? The model's own
penultimate features (read with a forward hook during the call the model makes anyway), plus
statistics of its output (box count, mean confidence, mean box area) as extra drift features:

    hook = FeatureHook(model.backbone)               # registered once
    exporter = Exporter(model="detector", embedder="features")

    @exporter.monitor(features=lambda detections: [hook.take(), box_statistics(detections)])
    def predict(images):
        return model(images)

``features(result)`` runs on the caller's thread right after the call: ``hook.take()`` returns
the pooled tensor the hook kept (no host copy, no GPU sync); the hand-off thread copies it.
With ``embedder="features"`` the worker compares these rows as given (a Gaussian-kernel MMD on
Euclidean distance): put them on comparable scales (``box_statistics`` returns log-count,
mean score and mean relative area, all of order 1; ``FeatureHook(normalize=True)`` scales each
row to unit length).
"""

from __future__ import annotations

import contextvars
from typing import Any

import numpy as np
import torch

from virk_exporter.embed.embedders import OutputsEmbedder


class FeaturesEmbedder(OutputsEmbedder):
    """``embedder="features"``: per-frame feature rows supplied by ``features=``, used as given."""

    def __init__(self, device: Any = None) -> None:
        super().__init__(device=device)
        self.id = "features/v1"

    def embed_outputs(self, outputs: Any) -> np.ndarray:
        rows = np.asarray(outputs, np.float32)
        if rows.ndim != 2:
            raise ValueError(f"features must be [N, d], got shape {rows.shape}")
        if self._dim is not None and rows.shape[1] != self._dim:
            raise ValueError(f"features changed width: {rows.shape[1]}, expected {self._dim}")
        self._dim = int(rows.shape[1])
        return rows


def _pool(value: Any) -> torch.Tensor:
    """A layer's output as [N, C]: the last tensor of a dict (e.g. an FPN's coarsest map), the first of a tuple,
    spatial maps averaged over space, token sequences averaged over tokens."""
    if isinstance(value, dict):
        value = list(value.values())[-1]
    if isinstance(value, (tuple, list)):  # (hidden_state, ...) as many layers return
        value = value[0]
    if hasattr(value, "last_hidden_state"):  # Hugging Face ModelOutput
        value = value.last_hidden_state
    t = value.detach()
    if t.ndim == 4:
        return t.float().mean((2, 3))
    if t.ndim == 3:
        return t.float().mean(1)
    return t.float().reshape(t.shape[0], -1)


class FeatureHook:
    """Keeps the pooled output of ``layer`` from the latest forward pass in this thread/task.

    Per context (a ``ContextVar``), so concurrent requests in threads or asyncio tasks never
    read each other's features. Pooling is one small reduction on the layer's device.
    """

    def __init__(self, layer: torch.nn.Module, normalize: bool = False) -> None:
        self.normalize = normalize
        self._latest: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(f"virk_hook_{id(self)}", default=None)
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, _module: Any, _inputs: Any, output: Any) -> None:
        pooled = _pool(output)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=1)
        self._latest.set(pooled)

    def take(self) -> torch.Tensor:
        """The features of the latest forward pass in this context (and forget them)."""
        value = self._latest.get()
        if value is None:
            raise RuntimeError("FeatureHook: the hooked layer did not run in this call")
        self._latest.set(None)
        return value

    def remove(self) -> None:
        self._handle.remove()


def box_statistics(detections: list[dict[str, Any]], image_area: float | None = None) -> torch.Tensor:
    """Per image ``[log(1 + box count), mean score, mean box area / image area]`` from a
    torchvision-style detector output (a list of dicts with ``boxes`` [K, 4] xyxy and ``scores``
    [K]). ``image_area`` defaults to the area spanned by the largest box coordinate seen."""
    rows = []
    for det in detections:
        boxes, scores = det["boxes"], det["scores"]
        k = boxes.shape[0]
        if k == 0:
            rows.append(torch.zeros(3, device=boxes.device))
            continue
        area = ((boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)).float()
        total = image_area if image_area is not None else (boxes[:, 2].max() * boxes[:, 3].max()).float().clamp_min(1.0)
        count = torch.log1p(torch.tensor(float(k), device=boxes.device))
        rows.append(torch.stack([count, scores.float().mean(), (area / total).mean()]))
    return torch.stack(rows) if rows else torch.zeros((0, 3))
