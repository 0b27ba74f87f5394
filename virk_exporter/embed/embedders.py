"""Embedders: turn frames (or a model's outputs) into the vectors the drift tests compare.

Three kinds, one interface (``.id``, ``.dim``, ``embed(frames) -> float32 [N, d]``):

1. :class:`OutputsEmbedder` — softmax of the model's own class scores (black-box shift
   detection; the best single detector in Rabanser et al., "Failing Loudly", 2019).
2. :class:`HookEmbedder` — a user's torch layer (read through a forward hook) or any callable
   ``frames -> [N, d]``.
3. :class:`RandomConvEncoder` — the default: an untrained convolutional encoder with fixed,
   seeded weights on downscaled frames (random encoders are a strong baseline in the same
   paper). Its weights are generated from numpy's PCG64 bit stream, which is specified
   bit-for-bit, so every process and machine builds the same encoder; ``.id`` carries the
   architecture version and a hash of the weights, and references record it.

All run batched on the torch device picked by :func:`virk_exporter.drift._torch.pick_device`
(CUDA when available, else CPU; ``device=`` overrides). Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Protocol, runtime_checkable

import cv2
import numpy as np
import torch
from torch import nn

from virk_exporter.drift._torch import as_tensor, pick_device

DEFAULT_ENCODER_VERSION = "v1"


@runtime_checkable
class Embedder(Protocol):
    """What the worker needs of an embedder: a stable id (saved in references) and ``embed``."""

    id: str

    @property
    def dim(self) -> int | None: ...

    def embed(self, frames: np.ndarray) -> np.ndarray: ...


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:  # a single frame
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB (N, H, W, 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames


def _batches(n: int, batch_size: int) -> range:
    return range(0, n, max(1, batch_size))


# -- 1. model outputs --------------------------------------------------------------------------


class OutputsEmbedder:
    """Softmax of [N, K] logits (or probabilities, which pass through unchanged)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = pick_device(device)
        self._dim: int | None = None
        self.id = "outputs-softmax/v1"

    @property
    def dim(self) -> int | None:
        return self._dim

    @torch.no_grad()
    def embed_outputs(self, outputs: Any) -> np.ndarray:
        t = as_tensor(outputs, self.device)
        if t.ndim != 2:
            raise ValueError(f"model outputs must be [N, K] scores, got shape {tuple(t.shape)}")
        if self._dim is not None and t.shape[1] != self._dim:
            raise ValueError(f"model outputs changed width: {t.shape[1]} classes, expected {self._dim}")
        self._dim = int(t.shape[1])
        # Rows that are already distributions are kept: softmax of probabilities would flatten them.
        is_prob = bool((t >= 0).all()) and bool(torch.allclose(t.sum(1), torch.ones(1, device=t.device), atol=1e-3))
        probs = t if is_prob else torch.softmax(t, dim=1)
        return probs.float().cpu().numpy()

    def embed(self, frames: np.ndarray) -> np.ndarray:
        raise TypeError("OutputsEmbedder embeds model outputs: call embed_outputs(outputs)")


# -- 2. user hook ------------------------------------------------------------------------------


def frames_to_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float32 (N, 3, H, W) in [0, 1] — the usual model input layout."""
    return torch.from_numpy(np.ascontiguousarray(frames)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _flatten_features(t: torch.Tensor) -> torch.Tensor:
    if t.ndim > 2:  # spatial feature maps: average over space so d does not scale with H×W
        t = t.flatten(2).mean(2)
    return t.reshape(t.shape[0], -1)


class HookEmbedder:
    """Features from the user's model.

    * ``HookEmbedder(model, layer=model.backbone)`` runs ``model`` on the frames and reads the
      output of ``layer`` through a forward hook (spatial maps are averaged over space).
    * ``HookEmbedder(fn)`` calls ``fn(frames) -> [N, d]`` (numpy or torch) directly.

    ``preprocess`` maps uint8 frames to the module's input tensor (default: NCHW float in
    [0, 1] on the chosen device). Pass ``id`` to name the features in saved references;
    the default names the callable's/layer's type, which is enough to catch a swapped model
    but not a retrained one.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[np.ndarray], Any],
        layer: nn.Module | None = None,
        preprocess: Callable[[np.ndarray, torch.device], torch.Tensor] | None = None,
        id: str | None = None,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.model = model
        self.layer = layer
        self.preprocess = preprocess or frames_to_tensor
        self.batch_size = batch_size
        self._dim: int | None = None
        if layer is not None and not isinstance(model, nn.Module):
            raise TypeError("layer= needs model to be a torch.nn.Module")
        if isinstance(model, nn.Module):
            model.to(self.device).eval()
        name = type(layer).__name__ if layer is not None else getattr(model, "__qualname__", type(model).__name__)
        self.id = id or f"hook/{type(model).__name__}/{name}"

    @property
    def dim(self) -> int | None:
        return self._dim

    @torch.no_grad()
    def _run(self, batch: np.ndarray) -> torch.Tensor:
        if self.layer is None:
            if isinstance(self.model, nn.Module):
                return _flatten_features(self.model(self.preprocess(batch, self.device)))
            return _flatten_features(as_tensor(self.model(batch), torch.device("cpu")))
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            self.model(self.preprocess(batch, self.device))
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"layer {type(self.layer).__name__} did not run during the forward pass")
        out = captured[-1]
        out = out[0] if isinstance(out, (tuple, list)) else out
        return _flatten_features(out)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = _check_frames(frames)
        parts = [self._run(frames[i : i + self.batch_size]).float().cpu().numpy() for i in _batches(len(frames), self.batch_size)]
        out = np.concatenate(parts) if parts else np.zeros((0, self._dim or 0), np.float32)
        if out.ndim != 2 or out.shape[0] != len(frames):
            raise ValueError(f"hook returned shape {out.shape} for {len(frames)} frames; expected [N, d]")
        self._dim = int(out.shape[1])
        return out.astype(np.float32, copy=False)


# -- 3. default random conv encoder ------------------------------------------------------------


def _kaiming_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """He-uniform weights from raw PCG64 doubles (``random()`` is a fixed bit transform)."""
    fan_in = int(np.prod(shape[1:]))
    bound = np.sqrt(6.0 / fan_in)
    return ((rng.random(shape) * 2.0 - 1.0) * bound).astype(np.float32)


class RandomConvEncoder:
    """Untrained, seeded conv encoder: 64×64 RGB → 3 strided conv+ReLU → 2×2 average pool → 512.

    Downscaling (OpenCV area interpolation) keeps the cost per frame independent of the
    camera's resolution; the features still respond to blur, noise, exposure, colour, and the
    2×2 pooling keeps coarse layout (camera shift, occlusion).
    """

    CHANNELS = (3, 32, 64, 128)
    KERNELS = (5, 3, 3)

    def __init__(
        self,
        seed: int = 0,
        size: int = 64,
        batch_size: int = 256,
        device: str | torch.device | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.seed, self.size, self.batch_size = int(seed), int(size), int(batch_size)
        rng = np.random.Generator(np.random.PCG64(self.seed))
        layers: list[nn.Module] = []
        digest = hashlib.sha256()
        for c_in, c_out, k in zip(self.CHANNELS[:-1], self.CHANNELS[1:], self.KERNELS):
            conv = nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2)
            w = _kaiming_uniform(rng, (c_out, c_in, k, k))
            # Small random biases so ReLU units do not all switch at exactly zero.
            b = ((rng.random(c_out) * 2.0 - 1.0) * 0.1).astype(np.float32)
            conv.weight.data = torch.from_numpy(w)
            conv.bias.data = torch.from_numpy(b)
            digest.update(w.tobytes())
            digest.update(b.tobytes())
            layers += [conv, nn.ReLU(inplace=True)]
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        self.net = nn.Sequential(*layers).to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.id = f"random-conv/{DEFAULT_ENCODER_VERSION}/size={self.size}/seed={self.seed}/{digest.hexdigest()[:12]}"

    @property
    def dim(self) -> int:
        return self.CHANNELS[-1] * 4

    def _downscale(self, frames: np.ndarray) -> np.ndarray:
        if frames.shape[1:3] == (self.size, self.size):
            return frames
        out = np.empty((len(frames), self.size, self.size, 3), np.uint8)
        for i, f in enumerate(frames):  # one OpenCV call per frame (C loop over pixels)
            cv2.resize(f, (self.size, self.size), dst=out[i], interpolation=cv2.INTER_AREA)
        return out

    @torch.no_grad()
    def embed(self, frames: np.ndarray) -> np.ndarray:
        frames = _check_frames(frames)
        parts = []
        for i in _batches(len(frames), self.batch_size):
            x = frames_to_tensor(self._downscale(frames[i : i + self.batch_size]), self.device)
            # Fixed centring so features do not depend on batch composition.
            parts.append(self.net((x - 0.5) / 0.25).cpu().numpy())
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, self.dim), np.float32)


def embedder_from_id(embedder_id: str, device: str | torch.device | None = None) -> Embedder | OutputsEmbedder:
    """Rebuild an embedder from the id a reference recorded (the kinds that can be rebuilt).

    Hook embedders wrap user code, so they cannot be rebuilt from an id: pass the same
    ``HookEmbedder`` again.
    """
    if embedder_id.startswith("random-conv/"):
        fields = dict(p.split("=", 1) for p in embedder_id.split("/") if "=" in p)
        enc = RandomConvEncoder(seed=int(fields.get("seed", 0)), size=int(fields.get("size", 64)), device=device)
        if enc.id != embedder_id:
            raise ValueError(
                f"reference embedder {embedder_id!r} cannot be rebuilt by this version of virk-exporter "
                f"(it builds {enc.id!r}); rebuild the reference"
            )
        return enc
    if embedder_id.startswith("outputs-softmax/"):
        return OutputsEmbedder(device=device)
    raise ValueError(f"embedder {embedder_id!r} wraps user code; pass the same HookEmbedder explicitly")
