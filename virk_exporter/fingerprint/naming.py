"""Which capture cause explains a drifted window: a small multinomial logistic model over the
diagnosis's evidence, fitted to other people's corruption code.

The rules of ``causes.py`` decide *whether* a window moved in some cause's direction (their
scores are what the capture detector calibrates); deciding *which* cause it was by the largest
rule score failed on material the rules were not written on: on a static camera nearly every
property that moves at all moves by tens to thousands of reference spreads, ``log1p`` brings
them all to 4-7, and fog (sharpness lost) reads as blur, an offset brightening (haze up) as fog.
This model weighs all the evidence at once — each property's signed effect and KS distance and
every rule's score — and was fitted by ``benchmarks/train_cause_model.py`` on the TUNE
photographs (ImageNet-C's reference code, albumentations, real codecs, camera faults and ours);
BENCHMARKS.md reports it on photographs it never saw. The fitted numbers live in
``cause_model.json`` beside this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import optimize, special

from virk_exporter.drift.ks import PropertyTest
from virk_exporter.fingerprint.geometry import GEOMETRY_NAMES
from virk_exporter.fingerprint.properties import PROPERTY_NAMES

# Gates of causes.py, not evidence of which cause: "layout" (is this still the reference's
# scene?), "local_focus" and "local_same" (is a darkened region an occluder, a shadow or
# something that entered the scene?).
GATES = ("layout", "local_focus", "local_same")
MEASURED: tuple[str, ...] = PROPERTY_NAMES + tuple(n for n in GEOMETRY_NAMES if n not in GATES)
MODEL_FILE = "cause_model.json"
KINDS = ("effect", "ks", "relative")


def feature_names(causes: Sequence[str]) -> tuple[str, ...]:
    return tuple(f"{kind}:{p}" for p in MEASURED for kind in KINDS) + tuple(f"rule:{c}" for c in causes)


def evidence_features(tests: Sequence[PropertyTest], scores: Mapping[str, float], causes: Sequence[str]) -> np.ndarray:
    """The model's input: per significant property its signed ``log1p`` effect (in reference
    spreads: large on a still camera, small on a busy one), signed KS distance, and relative
    change of the median (scale-free, bounded); 0 when not significant. Then every rule's score,
    in ``feature_names`` order."""
    by_name = {t.name: t for t in tests}
    k = len(KINDS)
    out = np.zeros(k * len(MEASURED) + len(causes))
    for i, name in enumerate(MEASURED):
        t = by_name.get(name)
        if t is not None and t.significant and np.isfinite(t.effect):
            sign = 1.0 if t.effect >= 0 else -1.0
            out[k * i] = sign * np.log1p(abs(t.effect))
            out[k * i + 1] = sign * t.statistic
            out[k * i + 2] = (t.current - t.reference) / (abs(t.current) + abs(t.reference) + 1e-6)
    out[k * len(MEASURED) :] = [scores.get(c, 0.0) for c in causes]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # an odd frame's NaN must not pick a cause


@dataclass(frozen=True)
class CauseModel:
    """Standardized features -> softmax over ``classes``."""

    features: tuple[str, ...]
    classes: tuple[str, ...]
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    weights: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)
    provenance: dict[str, Any]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(C,) for one feature vector, (N, C) for a batch."""
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return special.softmax(z @ self.weights.T + self.bias, axis=-1)

    def best(self, x: np.ndarray, among: Sequence[str] | None = None) -> tuple[str, dict[str, float]]:
        """The most probable class (of ``among``, when given) and every class's probability."""
        p = self.probabilities(x)
        allowed = np.array([among is None or c in among for c in self.classes])
        return self.classes[int(np.argmax(np.where(allowed, p, -1.0)))], {c: round(float(v), 4) for c, v in zip(self.classes, p)}

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        labels: Sequence[str],
        classes: Sequence[str],
        features: Sequence[str],
        l2: float = 1.0,
        groups: Sequence[str] | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> "CauseModel":
        """Maximum likelihood with an L2 penalty on the weights. Classes weigh the same in total
        (weather has many implementations, glare two), and so do the ``groups`` (fault
        implementations) within a class, however many windows each brought."""
        x = np.asarray(x, np.float64)
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[label] for label in labels])
        groups = list(groups) if groups is not None else list(labels)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-9] = 1.0  # a feature that never moved in training carries no weight
        z = (x - mean) / scale
        n, f = z.shape
        c = len(classes)
        per_group = {g: groups.count(g) for g in set(groups)}
        groups_in_class = {k: len({g for g, yy in zip(groups, y) if yy == k}) for k in set(y.tolist())}
        present = len(groups_in_class)
        sample_weight = np.array([n / (present * groups_in_class[yy] * per_group[g]) for g, yy in zip(groups, y)])
        onehot = np.eye(c)[y]

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[: c * f].reshape(c, f), theta[c * f :]
            logits = z @ w.T + b
            log_p = logits - special.logsumexp(logits, axis=1, keepdims=True)
            nll = -float(np.sum(sample_weight * np.sum(onehot * log_p, axis=1))) / n
            residual = (np.exp(log_p) - onehot) * sample_weight[:, None] / n
            grad_w = residual.T @ z + l2 * w / n
            return nll + 0.5 * l2 * float(np.sum(w * w)) / n, np.concatenate([grad_w.ravel(), residual.sum(axis=0)])

        result = optimize.minimize(loss, np.zeros(c * f + c), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
        w, b = result.x[: c * f].reshape(c, f), result.x[c * f :]
        return cls(tuple(features), tuple(classes), mean, scale, w, b, dict(provenance or {}))

    def to_json(self) -> str:
        body = {
            "features": list(self.features),
            "classes": list(self.classes),
            "mean": np.round(self.mean, 6).tolist(),
            "scale": np.round(self.scale, 6).tolist(),
            "weights": np.round(self.weights, 5).tolist(),
            "bias": np.round(self.bias, 5).tolist(),
            "provenance": self.provenance,
        }
        return json.dumps(body, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "CauseModel":
        body = json.loads(text)
        model = cls(
            tuple(body["features"]),
            tuple(body["classes"]),
            np.asarray(body["mean"], np.float64),
            np.asarray(body["scale"], np.float64),
            np.asarray(body["weights"], np.float64),
            np.asarray(body["bias"], np.float64),
            dict(body.get("provenance", {})),
        )
        if model.weights.shape != (len(model.classes), len(model.features)) or model.mean.shape != (len(model.features),):
            raise ValueError("cause model: weights do not match its features and classes")
        return model


@lru_cache(maxsize=1)
def shipped_model(causes: tuple[str, ...]) -> CauseModel:
    """The fitted model in the package; refuses one fitted on other features or causes."""
    model = CauseModel.from_json(resources.files(__package__).joinpath(MODEL_FILE).read_text(encoding="utf-8"))
    if model.features != feature_names(causes) or set(model.classes) - set(causes):
        raise ValueError(f"{MODEL_FILE} was fitted on other features or causes: refit it (benchmarks/train_cause_model.py)")
    return model
