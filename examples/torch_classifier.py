"""A plain torch classifier under virk-exporter: tags for slices, frame ids, late labels.

Runs offline as is (no weights to download):

    python examples/torch_classifier.py            # prints what the exporter saw
    python examples/torch_classifier.py --port 10098  # and serves /metrics while it runs

A camera at four sites sends frames of four scenes; the classifier names the scene. After a
while the camera at ``site-2`` loses exposure (its frames go dark). The exporter detects the
drift, ranks ``site=site-2`` first among the slices, and when the (simulated) labelling team's
ground truth arrives ten batches later, ``virk_label_accuracy_ratio`` drops: drift first, accuracy later.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from _util import camera, metrics_text, show
from virk_exporter import Exporter

SCENES = ("astronaut", "coffee", "chelsea", "rocket")
SITES = ("site-0", "site-1", "site-2", "site-3")


class SceneNet(nn.Module):
    """A small torch classifier: pooled colour layout → linear layer.

    Stands for your model; its linear layer is fit in closed form as a nearest-prototype
    classifier on clean frames (logit_k = 2·x·p_k − |p_k|², so argmax = nearest prototype).
    """

    def __init__(self, clean: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(6)
        prototypes = torch.stack([self.pool(x).flatten(1).mean(0) for _, x in sorted(clean.items())])
        self.fc = nn.Linear(prototypes.shape[1], len(clean))
        with torch.no_grad():
            self.fc.weight.copy_(2 * prototypes)
            self.fc.bias.copy_(-(prototypes**2).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N×3×H×W float in [0, 1]
        return self.fc(self.pool(x).flatten(1))


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)


def run(batches: int = 40, batch_size: int = 8, drift_from: int = 14, label_delay: int = 10, port: int | None = None, store: str | None = None) -> dict:
    rng = np.random.default_rng(0)
    clean = {k: camera(scene, 48, seed=k) for k, scene in enumerate(SCENES)}
    dark = {k: camera(scene, 48, seed=100 + k, dark=True) for k, scene in enumerate(SCENES)}
    model = SceneNet({k: to_tensor(v[:16]) for k, v in clean.items()}).eval()

    exporter = Exporter(model="scene-classifier", store=store, reference_period_s=0, reference_frames=64, window=64, test_every=32)
    if port is not None:
        exporter.serve(port=port)

    @exporter.monitor(source=lambda frames, sites: "dock-cam", tags=lambda frames, sites: [{"site": s, "firmware": "2.3"} for s in sites])
    @torch.no_grad()
    def predict(frames: torch.Tensor, sites: list[str]) -> torch.Tensor:
        return model(frames)  # N×K logits; virk-exporter's default `predicted` is their argmax

    waiting: list[tuple[range, list[int]]] = []
    for step in range(batches):
        scenes = rng.integers(0, len(SCENES), batch_size)
        sites = [SITES[i] for i in rng.integers(0, len(SITES), batch_size)]
        frames = np.stack(
            [(dark if step >= drift_from and site == "site-2" else clean)[k][rng.integers(0, 48)] for k, site in zip(scenes, sites)]
        )
        predict(to_tensor(frames), sites=sites)
        waiting.append((exporter.last_frame_ids(), [int(k) for k in scenes]))  # ids of this call's frames
        if len(waiting) > label_delay:  # ground truth arrives `label_delay` batches later
            ids, truth = waiting.pop(0)
            exporter.record_labels(list(ids), truth)
        exporter.flush()  # an example paces itself; a service does not need this
    for ids, truth in waiting:
        exporter.record_labels(list(ids), truth)
    exporter.flush()
    status = exporter.request("status")
    text = metrics_text(exporter)
    exporter.close()
    return {"status": status, "metrics": text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    started = time.time()
    result = run(batches=args.batches, port=args.port)
    source = result["status"]["sources"]["dock-cam"]
    print(f"{time.time() - started:.1f}s: drift detected={source['detected']} fingerprint={source['fingerprint']}")
    if source.get("slices"):
        print("slices ranked:", [(s["slice"], round(s["score"], 1), s["significant"]) for s in source["slices"]["slices"]])
    show(result["metrics"], ("virk_drift_detected", "virk_slice_drift_score", "virk_label_accuracy_ratio", "virk_labels_total"))


if __name__ == "__main__":
    main()
