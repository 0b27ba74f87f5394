"""Two-sample Kolmogorov-Smirnov tests on scalar image properties, with a correction for
testing many properties at once (Benjamini-Hochberg false discovery rate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import special, stats


@dataclass(frozen=True)
class PropertyTest:
    """One property's comparison of the current window against the reference."""

    name: str
    reference: float  # reference median
    current: float  # current median
    effect: float  # (current - reference) / robust reference spread
    statistic: float  # KS D
    p_value: float  # raw
    q_value: float  # Benjamini-Hochberg adjusted
    significant: bool


def _median_of_sorted(values: np.ndarray) -> float:
    # np.median costs ~30 µs a call in its argument handling; diagnosis takes ~130 medians.
    n = values.size
    return float(values[n // 2]) if n % 2 else 0.5 * float(values[n // 2 - 1] + values[n // 2])


def _spread_of_sorted(values: np.ndarray) -> float:
    """1.4826 * MAD, floored so constant reference properties do not divide by zero."""
    median = _median_of_sorted(values)
    mad = _median_of_sorted(np.sort(np.abs(values - median)))
    return max(1.4826 * mad, 1e-6 * (1.0 + abs(median)), 1e-9)


@dataclass(frozen=True)
class SortedSample:
    """A reference sample sorted once, with its median and spread: a source's reference is tested
    against every live window, and sorting it (twice, for the MAD) was most of a diagnosis."""

    values: np.ndarray
    median: float
    spread: float

    def __len__(self) -> int:
        return int(self.values.size)

    @classmethod
    def of(cls, values: np.ndarray) -> "SortedSample":
        ordered = np.sort(np.asarray(values, dtype=np.float64))
        return cls(ordered, _median_of_sorted(ordered), _spread_of_sorted(ordered))


def _ks_of_sorted(ref: np.ndarray, cur: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS statistic of sorted samples and its asymptotic p-value
    (Kolmogorov distribution). ``scipy.stats.ks_2samp`` costs ~6 ms a call in its argument
    handling; the capture detector's calibration runs thousands, so it is computed here."""
    pooled = np.concatenate([ref, cur])
    gap = np.searchsorted(ref, pooled, side="right") / ref.size - np.searchsorted(cur, pooled, side="right") / cur.size
    d = float(np.abs(gap).max())
    en = ref.size * cur.size / (ref.size + cur.size)
    return d, float(special.kolmogorov(np.sqrt(en) * d))


def ks_property_tests(
    reference: Mapping[str, np.ndarray | SortedSample],
    current: Mapping[str, np.ndarray],
    alpha: float = 0.01,
) -> list[PropertyTest]:
    """KS-test every property present in both mappings; BH-correct at level ``alpha``.

    ``reference`` values may be :class:`SortedSample` (sorted once for many tests).
    Returns tests sorted by adjusted q-value (most significant first).
    """
    names = [n for n in reference if n in current and len(reference[n]) > 0 and len(current[n]) > 0]
    if not names:
        return []
    raw = []
    for name in names:
        given = reference[name]
        ref = given if isinstance(given, SortedSample) else SortedSample.of(given)
        cur = np.sort(np.asarray(current[name], dtype=np.float64))
        d, p = _ks_of_sorted(ref.values, cur)
        raw.append((name, ref, cur, d, p))
    q_values = stats.false_discovery_control(np.array([r[4] for r in raw]), method="bh")
    tests = []
    for (name, ref, cur, d, p), q in zip(raw, q_values):
        ref_med, cur_med = ref.median, _median_of_sorted(cur)
        tests.append(
            PropertyTest(
                name=name,
                reference=ref_med,
                current=cur_med,
                effect=(cur_med - ref_med) / ref.spread,
                statistic=d,
                p_value=p,
                q_value=float(q),
                significant=bool(q <= alpha),
            )
        )
    tests.sort(key=lambda t: (t.q_value, -t.statistic))
    return tests
