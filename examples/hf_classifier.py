"""A Hugging Face image classifier (ViT) under virk-exporter, with class names as late labels.

    python examples/hf_classifier.py              # google/vit-base-patch16-224 via transformers
    python examples/hf_classifier.py --stand-in   # offline: a tiny model with the same interface

Needs ``transformers`` and the checkpoint download (network); neither is available offline.
``--stand-in`` (and the test suite) runs ``standins.TinyImageProcessor`` and
``standins.TinyViTForImageClassification``: ``processor(images=..., return_tensors="pt")``,
``model(**inputs).logits`` and ``model.config.id2label``, as transformers has them.

Wiring: the frames are the list of HxWx3 uint8 images the processor takes (what the exporter
watches: the camera's pixels, before resizing and normalisation). ``embedder="outputs"``
tests drift on the softmax of the logits (black-box shift detection); ``predicted=`` turns the
logits into class *names*, so labels arrive in the labelling tool's vocabulary.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _util import camera, metrics_text, show
from virk_exporter import Exporter

CHECKPOINT = "google/vit-base-patch16-224"


def load(checkpoint: str = CHECKPOINT) -> tuple[object, torch.nn.Module]:
    try:
        from transformers import AutoImageProcessor, AutoModelForImageClassification
    except ImportError as missing:
        raise SystemExit(f"this example needs transformers ({missing}); run it with --stand-in offline") from None
    return AutoImageProcessor.from_pretrained(checkpoint), AutoModelForImageClassification.from_pretrained(checkpoint).eval()


def run(processor=None, model=None, scenes: dict[str, str] | None = None, batches: int = 36, batch_size: int = 8, drift_from: int = 14, store: str | None = None) -> dict:
    if model is None:
        processor, model = load()
    scenes = scenes or {name: name for name in model.config.id2label.values()}
    names = list(scenes)
    id2label = model.config.id2label
    exporter = Exporter(model="vit-classifier", store=store, embedder="outputs", reference_period_s=0, reference_frames=64, window=64, test_every=32)

    @exporter.monitor(
        frames_arg="images",
        source=lambda images, store_id: store_id,
        tags=lambda images, store_id: {"shelf": "fresh" if store_id.endswith("1") else "dry"},
        predicted=lambda logits: [id2label[i] for i in logits.argmax(-1).tolist()],
    )
    @torch.no_grad()
    def classify(images: list[np.ndarray], store_id: str) -> torch.Tensor:
        inputs = processor(images=images, return_tensors="pt")
        return model(**inputs).logits

    rng = np.random.default_rng(2)
    pools = {name: camera(photo, 48, seed=i) for i, (name, photo) in enumerate(scenes.items())}
    dark = {name: camera(photo, 48, seed=50 + i, dark=True) for i, (name, photo) in enumerate(scenes.items())}
    waiting = []
    for step in range(batches):
        truth = [names[i] for i in rng.integers(0, len(names), batch_size)]
        source = dark if step >= drift_from else pools
        images = [source[t][rng.integers(0, 48)] for t in truth]
        classify(images, store_id="store-1")
        waiting.append((exporter.last_frame_ids(), truth))
        if len(waiting) > 8:  # the labelling tool answers 8 batches later, with class names
            ids, labels = waiting.pop(0)
            exporter.record_labels(dict(zip(ids, labels)))
        exporter.flush()
    for ids, labels in waiting:
        exporter.record_labels(dict(zip(ids, labels)))
    exporter.flush()
    status = exporter.request("status")
    text = metrics_text(exporter)
    exporter.close()
    return {"status": status, "metrics": text}


def stand_in() -> tuple[object, torch.nn.Module, dict[str, str]]:
    """The offline stand-in, its classifier fit to three scenes (names as id2label has them)."""
    from standins import TinyImageProcessor, TinyViTForImageClassification

    scenes = {"cat": "chelsea", "coffee mug": "coffee", "rocket": "rocket"}
    processor = TinyImageProcessor()
    model = TinyViTForImageClassification(dict(enumerate(scenes)))
    model.fit_prototypes({i: processor(list(camera(photo, 16, seed=90 + i)))["pixel_values"] for i, photo in enumerate(scenes.values())})
    return processor, model.eval(), scenes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stand-in", action="store_true", help="use the offline stand-in model")
    args = parser.parse_args()
    started = time.time()
    if args.stand_in:
        processor, model, scenes = stand_in()
        result = run(processor, model, scenes)
    else:  # the real ViT knows 1000 ImageNet classes; show it photographs of a few of them
        processor, model = load()
        result = run(processor, model, {"Egyptian cat": "chelsea", "coffee mug": "coffee", "missile": "rocket"})
    source = result["status"]["sources"]["store-1"]
    print(f"{time.time() - started:.1f}s: drift detected={source['detected']} p={source['p_value']}")
    show(result["metrics"], ("virk_drift_detected", "virk_label_accuracy_ratio", "virk_labels_total"))


if __name__ == "__main__":
    main()
