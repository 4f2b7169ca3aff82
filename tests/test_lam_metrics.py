"""LAM report metrics: golden values (AMI against scikit-learn's published definition, computed by hand /
cross-checked once with scikit-learn 1.x), perplexity, probes, manoeuvre classes."""

from __future__ import annotations

import numpy as np
import pytest

from latentvla.lam import metrics as M


@pytest.mark.parametrize("a, b, expected", [
    ([0, 0, 1, 1], [0, 0, 1, 1], 1.0),
    ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),  # label names do not matter
    ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
    ([0, 0, 1, 1], [0, 0, 1, 2], 0.5714285714285715),  # scikit-learn adjusted_mutual_info_score
    ([0, 0, 0, 1, 1, 1, 2, 2], [1, 1, 0, 0, 2, 2, 2, 0], 0.07271978991886596),
    ([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], [0, 0, 1, 1, 2, 2, 0, 1, 2, 2], -0.17694910459830043),
])
def test_ami_golden(a, b, expected):
    assert M.adjusted_mutual_info(np.array(a), np.array(b)) == pytest.approx(expected, abs=1e-9)


def test_ami_independent_labels_near_zero():
    rng = np.random.default_rng(0)
    assert abs(M.adjusted_mutual_info(rng.integers(0, 8, 2000), rng.integers(0, 5, 2000))) < 0.01


def test_perplexity_and_codes_used():
    assert M.perplexity(np.zeros(100, int), 16) == pytest.approx(1.0)
    assert M.perplexity(np.arange(16).repeat(5), 16) == pytest.approx(16.0)
    assert M.perplexity(np.array([0, 0, 1, 1]), 16) == pytest.approx(2.0)
    assert M.codes_used(np.array([[3, 3], [5, 7]])) == 3


def test_probe_r2_perfect_and_useless():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, (400, 2))
    x = M.one_hot(codes, 4)
    assert x.shape == (400, 8) and np.all(x.sum(1) == 2)
    y = (codes[:, :1] * 2.0 - codes[:, 1:]).astype(float)  # linear in the one-hot features
    assert M.probe_r2(x[:300], y[:300], x[300:], y[300:]) > 0.999
    noise = rng.normal(size=(400, 1))
    assert M.probe_r2(x[:300], noise[:300], x[300:], noise[300:]) < 0.05


def test_feature_ceiling_tells_frame_content_from_change():
    rng = np.random.default_rng(3)
    n, t, d = 1200, 3, 16
    ft = rng.normal(size=(n, t, d))
    change = rng.normal(size=(n, t, d))
    ftp = ft + change
    y_frame = ft[:, 0, :2] @ np.array([[1.0], [-2.0]])  # a property of the current frame
    y_change = change[:, 1, :1] * 3.0  # what moved
    for y, high, low in ((y_frame, "frame", "change"), (y_change, "change", "frame")):
        mean, basis = M.pca_basis(ft.reshape(-1, d), d)
        frame, moved = (ft - mean) @ basis, (ftp - ft) @ basis
        out = M.feature_ceiling((frame[:900], moved[:900], y[:900]), (frame[900:], moved[900:], y[900:]))
        assert out[high] > 0.9 and out[low] < 0.05, (high, out)


def test_pca_basis_finds_the_principal_direction():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(500, 1)) * np.array([[3.0, 4.0, 0.0]]) + rng.normal(size=(500, 3)) * 0.01 + 7.0
    mean, basis = M.pca_basis(rows, 1)
    assert basis.shape == (3, 1) and np.allclose(mean, rows.mean(0))
    assert abs(abs(basis[:, 0] @ np.array([0.6, 0.8, 0.0])) - 1.0) < 1e-3


def test_maneuver_classes():
    motion = np.zeros((4, 9))
    motion[0, 2] = 0.3  # left turn, constant speed
    motion[1, 2], motion[1, 3], motion[1, 7] = -0.3, 10.0, 8.0  # right turn while braking
    motion[2, 3], motion[2, 7] = 5.0, 6.0  # straight, accelerating
    assert M.maneuver_class(motion).tolist() == [1, 6, 5, 4]
