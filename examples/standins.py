"""Small stand-ins with the interfaces of models and packages the examples use, for offline runs.

The examples load real models (torchvision's Faster R-CNN, a Hugging Face ViT) and run under
FastAPI. Offline, or without those packages, the examples (``--stand-in``) and the test suite use
these instead. Each one keeps the interface the example relies on, so the wiring shown is the
wiring a real model gets:

* :class:`TinyDetector`: ``model(list of CHW float tensors) -> list of {"boxes", "scores",
  "labels"}`` with a ``.backbone`` returning an ``OrderedDict`` of feature maps (torchvision's
  detection models).
* :class:`TinyImageProcessor` / :class:`TinyViTForImageClassification`: ``processor(images=...,
  return_tensors="pt") -> {"pixel_values"}``; ``model(pixel_values=...) -> .logits``;
  ``model.config.id2label`` (transformers' image classifiers).
* :func:`install_fastapi` registers a minimal ``fastapi`` module (``FastAPI`` with ``post``/``get``
  routes, ``mount``, ``add_middleware``; ``Request`` with ``body()``, ``json()``,
  ``query_params``), an ASGI app like the real one, when FastAPI is not installed.
"""

from __future__ import annotations

import json
import sys
import types
from collections import OrderedDict
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


# ---------------------------------------------------------------------- detector
class TinyBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        for conv in (self.c1, self.c2):
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) * (2.0 / conv.weight[0].numel()) ** 0.5
            conv.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        f1 = F.relu(self.c1(x))
        f2 = F.relu(self.c2(f1))
        return OrderedDict([("0", f1), ("pool", f2)])


class TinyDetector(nn.Module):
    """Finds bright blobs: a box per grid cell whose brightness stands out, scored by contrast."""

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.grid = grid

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch = torch.stack([F.interpolate(i[None], size=(64, 64), mode="bilinear", align_corners=False)[0] for i in images])
        self.backbone(batch)  # the features a real detector's heads would read
        out = []
        for image in images:
            _, h, w = image.shape
            cells = F.adaptive_avg_pool2d(image.mean(0, keepdim=True)[None], self.grid)[0, 0]
            contrast = (cells - cells.mean()) / (cells.std() + 1e-6)
            keep = torch.nonzero(contrast > 0.3)
            ch, cw = h / self.grid, w / self.grid
            boxes = torch.stack([torch.tensor([c * cw, r * ch, (c + 1) * cw, (r + 1) * ch]) for r, c in keep.tolist()]) if len(keep) else torch.zeros((0, 4))
            scores = torch.sigmoid(contrast[keep[:, 0], keep[:, 1]] * cells[keep[:, 0], keep[:, 1]] * 4) if len(keep) else torch.zeros(0)
            out.append({"boxes": boxes, "scores": scores, "labels": torch.ones(len(keep), dtype=torch.int64)})
        return out


# ---------------------------------------------------------------------- Hugging Face-style classifier
class TinyImageProcessor:
    """``AutoImageProcessor``-like: resize, scale, normalize; list of HWC uint8 → pixel_values NCHW."""

    size = 32

    def __call__(self, images: list[np.ndarray], return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(i)).permute(2, 0, 1).float() / 255 for i in images])
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return {"pixel_values": (x - 0.5) / 0.5}


class TinyViTForImageClassification(nn.Module):
    """``AutoModelForImageClassification``-like: ``model(pixel_values=x).logits`` and ``config.id2label``.
    Patch embedding → mean over patches → layernorm → classifier (prototype-initialised)."""

    def __init__(self, id2label: dict[int, str], prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = SimpleNamespace(id2label=dict(id2label), label2id={v: k for k, v in id2label.items()})
        self.patch = nn.Conv2d(3, 24, 8, stride=8)
        nn.init.orthogonal_(self.patch.weight.view(24, -1), generator=torch.Generator().manual_seed(0))
        self.layernorm = nn.LayerNorm(24)
        self.classifier = nn.Linear(24, len(id2label))

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(pixel_values).flatten(2).transpose(1, 2)  # N × patches × 24
        return self.layernorm(tokens).mean(1)

    def fit_prototypes(self, pixel_values: dict[int, torch.Tensor]) -> "TinyViTForImageClassification":
        with torch.no_grad():
            protos = torch.stack([self.features(x).mean(0) for _, x in sorted(pixel_values.items())])
            self.classifier.weight.copy_(2 * protos)
            self.classifier.bias.copy_(-(protos**2).sum(1))
        return self

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.classifier(self.features(pixel_values)))


# ---------------------------------------------------------------------- FastAPI
class _Request:
    def __init__(self, scope: dict, body: bytes) -> None:
        self.scope = scope
        self._body = body
        self.query_params = {k: v[-1] for k, v in _parse_qs(scope.get("query_string", b"")).items()}
        self.headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}

    async def body(self) -> bytes:
        return self._body

    async def json(self) -> Any:
        return json.loads(self._body)


def _parse_qs(raw: bytes) -> dict[str, list[str]]:
    import urllib.parse

    return urllib.parse.parse_qs(raw.decode("latin-1"))


class _FastAPI:
    """Routes, mounts (Starlette ≥ 0.33 semantics: full ``path``, ``root_path`` extended) and middleware."""

    def __init__(self, title: str = "app", **_: Any) -> None:
        self.title = title
        self.routes: dict[tuple[str, str], Callable] = {}
        self.mounts: list[tuple[str, Callable]] = []
        self.middleware: list[tuple[type, dict]] = []

    def _route(self, method: str, path: str) -> Callable:
        def register(endpoint: Callable) -> Callable:
            self.routes[(method, path)] = endpoint
            return endpoint

        return register

    def post(self, path: str, **_: Any) -> Callable:
        return self._route("POST", path)

    def get(self, path: str, **_: Any) -> Callable:
        return self._route("GET", path)

    def mount(self, path: str, app: Callable, name: str | None = None) -> None:
        self.mounts.append((path.rstrip("/"), app))

    def add_middleware(self, cls: type, **options: Any) -> None:
        self.middleware.append((cls, options))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        app: Callable = self._dispatch
        for cls, options in reversed(self.middleware):
            app = cls(app, **options)
        await app(scope, receive, send)

    async def _dispatch(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope["path"]
        for prefix, app in self.mounts:
            if path == prefix or path.startswith(prefix + "/"):
                return await app(dict(scope, root_path=scope.get("root_path", "") + prefix), receive, send)
        endpoint = self.routes.get((scope["method"], path))
        if endpoint is None:
            return await _reply(send, 404, {"detail": "Not Found"})
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        await _reply(send, 200, await endpoint(_Request(scope, body)))


async def _reply(send: Callable, status: int, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def install_fastapi() -> bool:
    """Register the stand-in as ``fastapi`` unless the real package imports. True when installed."""
    try:
        import fastapi  # noqa: F401

        return False
    except ImportError:
        module = types.ModuleType("fastapi")
        module.FastAPI = _FastAPI
        module.Request = _Request
        module.__virk_standin__ = True
        sys.modules["fastapi"] = module
        return True
