"""Batch MMD permutation test: exactness, calibration, reproducibility, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from virk_exporter.drift import MMDDrift


def straightforward_mmd2(z: np.ndarray, in_x: np.ndarray, gamma: float) -> float:
    """Textbook unbiased MMD² with a Gaussian kernel, in float64, one split at a time."""
    x, y = z[in_x], z[~in_x]
    def mean_offdiag(a: np.ndarray, b: np.ndarray) -> float:
        k = np.exp(-gamma * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
        return (k.sum() - np.trace(k)) / (len(a) * (len(a) - 1))
    kxy = np.exp(-gamma * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)).mean()
    return mean_offdiag(x, x) + mean_offdiag(y, y) - 2 * kxy


@pytest.mark.parametrize("n,m,d", [(30, 7, 4), (12, 25, 3), (40, 40, 16)])
def test_batched_permutations_equal_straightforward(n: int, m: int, d: int) -> None:
    rng = np.random.default_rng(n * m)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (rng.normal(size=(m, d)) + 0.3).astype(np.float32)
    det = MMDDrift(x, n_permutations=50, seed=3)
    observed, permuted = det.statistics(y)
    z = np.concatenate([x, y]).astype(np.float64)
    expected_obs = straightforward_mmd2(z, np.arange(n + m) < n, det.gamma)
    expected = np.array([straightforward_mmd2(z, a, det.gamma) for a in det.permutations(m)])
    assert det.permutations(m).sum(1).tolist() == [n] * 50  # group sizes preserved
    np.testing.assert_allclose(observed, expected_obs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(permuted, expected, rtol=1e-5, atol=1e-6)
    result = det.test(y)
    k = int((expected >= expected_obs).sum())
    assert result.p_value == pytest.approx((1 + k) / 51)


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(90, 8)) + 0.1
    whole = MMDDrift(x, n_permutations=64, seed=5).statistics(y)
    # 100 elements per chunk: every kernel block is cut into many row chunks
    chunked = MMDDrift(x, n_permutations=64, seed=5, chunk_elements=100).statistics(y)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5, atol=1e-6)
    # float32 kernel sums are summed in another order: agreement to float32 rounding
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-5, atol=1e-6)


def test_seed_reproducible_and_seeds_differ() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(80, 5)), rng.normal(size=(40, 5))
    a = MMDDrift(x, seed=11).statistics(y)
    b = MMDDrift(x, seed=11).statistics(y)
    c = MMDDrift(x, seed=12).statistics(y)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_unseeded_detectors_draw_fresh_permutations() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(20, 4))
    a, b = MMDDrift(x), MMDDrift(x)
    assert a.test(y).p_value > 0 and not np.array_equal(a.permutations(20), b.permutations(20))


def test_p_values_uniform_under_no_drift_and_false_alarm_rate() -> None:
    # 400 independent experiments: fresh reference and fresh test sample from one distribution.
    p = []
    for seed in range(400):
        rng = np.random.default_rng(10_000 + seed)
        x, y = rng.normal(size=(60, 6)), rng.normal(size=(30, 6))
        p.append(MMDDrift(x, n_permutations=100, p_val=0.05, seed=seed).test(y).p_value)
    p = np.array(p)
    assert p.min() >= 1 / 101  # never exactly 0
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.02 <= (p <= 0.05).mean() <= 0.08


def test_detects_clear_shift_and_threshold_matches_decision() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 8))
    det = MMDDrift(x, n_permutations=100, p_val=0.05, seed=0)
    shifted = det.test(rng.normal(size=(64, 8)) + 0.75)
    assert shifted.drift and shifted.p_value == pytest.approx(1 / 101)
    for i in range(30):
        r = det.test(rng.normal(size=(64, 8)) + 0.02 * i)
        assert r.drift == (r.statistic > r.threshold) == (r.p_value <= 0.05)


def test_rejects_bad_shapes() -> None:
    det = MMDDrift(np.zeros((10, 3)) + np.arange(10)[:, None], seed=0)
    with pytest.raises(ValueError):
        det.test(np.zeros((5, 4)))
    with pytest.raises(ValueError):
        det.test(np.zeros((1, 3)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(500, 64)), rng.normal(size=(64, 64)) + 0.05
    cpu = MMDDrift(x, n_permutations=200, seed=9, device="cpu")
    gpu = MMDDrift(x, n_permutations=200, seed=9, device="cuda")
    assert gpu.sigma == pytest.approx(cpu.sigma, rel=1e-4)
    (oc, pc), (og, pg) = cpu.statistics(y), gpu.statistics(y)
    np.testing.assert_allclose(og, oc, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(pg, pc, rtol=1e-3, atol=1e-6)
    assert abs(cpu.test(y).p_value - gpu.test(y).p_value) <= 2 / 201
