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


def test_maneuver_classes():
    motion = np.zeros((4, 9))
    motion[0, 2] = 0.3  # left turn, constant speed
    motion[1, 2], motion[1, 3], motion[1, 7] = -0.3, 10.0, 8.0  # right turn while braking
    motion[2, 3], motion[2, 7] = 5.0, 6.0  # straight, accelerating
    assert M.maneuver_class(motion).tolist() == [1, 6, 5, 4]
