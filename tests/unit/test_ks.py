"""The KS property tests: a reference sorted once gives the very tests the raw arrays give."""

from __future__ import annotations

import numpy as np
from scipy import stats

from virk_exporter.drift.ks import SortedSample, ks_property_tests


def test_a_presorted_reference_gives_the_same_tests_as_raw_arrays():
    rng = np.random.default_rng(4)
    reference = {"a": rng.normal(0, 1, 300), "b": rng.exponential(2.0, 300), "c": np.full(300, 5.0)}
    current = {"a": rng.normal(1.5, 1, 32), "b": rng.exponential(2.0, 32), "c": np.full(32, 5.0)}
    raw = ks_property_tests(reference, current)
    presorted = ks_property_tests({k: SortedSample.of(v) for k, v in reference.items()}, current)
    assert raw == presorted
    by_name = {t.name: t for t in raw}
    assert by_name["a"].statistic == stats.ks_2samp(reference["a"], current["a"]).statistic
    assert by_name["a"].significant and not by_name["b"].significant
    assert by_name["c"].effect == 0.0  # a constant reference: the spread's floor, no division by zero


def test_sorted_sample_keeps_median_and_robust_spread():
    sample = SortedSample.of(np.array([3.0, 1.0, 2.0, 100.0, 4.0]))
    assert list(sample.values) == [1.0, 2.0, 3.0, 4.0, 100.0]
    assert sample.median == 3.0
    assert sample.spread == 1.4826 * 1.0  # MAD of (2, 1, 0, 1, 97) is 1
