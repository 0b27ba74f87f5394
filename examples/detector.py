"""A detector whose output is boxes: what does drift mean, and how is it wired?

    python examples/detector.py              # torchvision Faster R-CNN (MobileNetV3, 320 px)
    python examples/detector.py --stand-in   # offline: a tiny detector with the same interface

Needs ``torchvision`` and, on first use, the COCO weights download (network). Neither is
available offline: ``--stand-in`` (and the test suite) runs :class:`standins.TinyDetector`,
which has the interface used here (``model(list of CHW tensors) -> list of {"boxes",
"scores", "labels"}`` and a ``.backbone`` returning an ``OrderedDict`` of feature maps).

A detector has no class-score vector to embed, so the drift features are:

1. the **penultimate features**: the backbone's coarsest feature map, read by a forward hook
   during the call the model makes anyway, averaged over space (``FeatureHook``);
2. **box statistics** per image: log(1 + box count), mean confidence, mean relative box area
   (``box_statistics``), which move when the scene or the model's behaviour changes.

``Exporter(embedder="features")`` tests drift on exactly these rows; ``features=`` hands them
over (it runs on the caller's thread, so it returns the tensors, and the hand-off thread copies).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _util import camera, metrics_text, show
from virk_exporter import Exporter
from virk_exporter.integrations import FeatureHook, box_statistics


def load_detector() -> torch.nn.Module:
    try:
        from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_320_FPN_Weights, fasterrcnn_mobilenet_v3_large_320_fpn
    except ImportError as missing:
        raise SystemExit(f"this example needs torchvision ({missing}); run it with --stand-in offline") from None
    weights = FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.DEFAULT  # downloaded on first use
    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=weights).eval()


def run(model: torch.nn.Module | None = None, batches: int = 30, batch_size: int = 6, fog_from: int = 16, store: str | None = None) -> dict:
    model = model if model is not None else load_detector()
    hook = FeatureHook(model.backbone, normalize=True)  # penultimate features, unit length
    exporter = Exporter(model="detector", store=store, embedder="features", reference_period_s=0, reference_frames=48, window=48, test_every=24)

    @exporter.monitor(
        source=lambda images, camera_id: camera_id,
        tags=lambda images, camera_id: {"lens": "wide" if camera_id == "gate" else "tele"},
        features=lambda detections: [hook.take(), box_statistics(detections)],
    )
    @torch.no_grad()
    def detect(images: list[torch.Tensor], camera_id: str) -> list[dict[str, torch.Tensor]]:
        return model(images)

    rng = np.random.default_rng(1)
    streams = {"gate": camera("motorcycle", 64, seed=1), "yard": camera("coins", 64, seed=2)}
    hazy = {"gate": _fog(camera("motorcycle", 64, seed=3))}
    for step in range(batches):
        for camera_id, frames in streams.items():
            pool = hazy[camera_id] if step >= fog_from and camera_id in hazy else frames
            batch = pool[rng.integers(0, len(pool), batch_size)]
            images = [torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in batch]  # torchvision's input
            detections = detect(images, camera_id=camera_id)
            assert len(detections) == batch_size  # the return value is untouched
        exporter.flush()
    status = exporter.request("status")
    text = metrics_text(exporter)
    exporter.close()
    hook.remove()
    return {"status": status, "metrics": text}


def _fog(frames: np.ndarray) -> np.ndarray:
    """Haze: contrast squashed toward grey (what a fogged lens does to a detector's input)."""
    return (frames.astype(np.float32) * 0.4 + 150).clip(0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stand-in", action="store_true", help="use the offline stand-in detector")
    args = parser.parse_args()
    model = None
    if args.stand_in:
        from standins import TinyDetector

        model = TinyDetector()
    started = time.time()
    result = run(model)
    for name, source in result["status"]["sources"].items():
        print(f"{name}: detected={source['detected']} p={source['p_value']} fingerprint={source['fingerprint']}")
    print(f"{time.time() - started:.1f}s")
    show(result["metrics"], ("virk_drift_detected", "virk_drift_p_value", "virk_frames_total"))


if __name__ == "__main__":
    main()
