"""Numbers that say whether latent actions are diverse, informative and disentangled (pure numpy/scipy).

- ``perplexity`` and ``codes_used``: codebook collapse (LAPA's failure mode) shows as perplexity near 1;
- ``adjusted_mutual_info``: chance-corrected agreement between a token position's codes and a discrete label
  (Vinh, Epps & Bailey 2010, arithmetic normalisation, as scikit-learn's default), written out to avoid a
  scikit-learn dependency for one function;
- ``probe_r2``: test R² of a ridge-regularised linear probe from one-hot codes to a continuous target;
- ``maneuver_class``: a discrete ego manoeuvre per window (turn direction x speed change) for the AMI;
- ``feature_ceiling``: what a linear read-out of the frozen features themselves (frame t, or the change t -> t+Δ)
  reaches on a target: the ceiling for latents that only encode the change.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln


def perplexity(codes: np.ndarray, num_codes: int) -> float:
    counts = np.bincount(np.asarray(codes).ravel(), minlength=num_codes).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    nz = p[p > 0]
    return float(np.exp(-(nz * np.log(nz)).sum()))


def codes_used(codes: np.ndarray) -> int:
    return int(len(np.unique(np.asarray(codes))))


def _entropy(counts: np.ndarray) -> float:
    n = counts.sum()
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def adjusted_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """AMI of two labelings (arithmetic mean normalisation); 1 = identical partitions, ~0 = independent."""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if len(a) != len(b):
        raise ValueError(f"labelings differ in length: {len(a)} vs {len(b)}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    n = len(a)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    ra, cb = table.sum(1), table.sum(0)
    if len(ra) == len(cb) == 1 or len(ra) == len(cb) == n:
        return 1.0
    nz = table > 0
    mi = float((table[nz] / n * np.log(n * table[nz] / np.outer(ra, cb)[nz])).sum())
    # expected MI under the hypergeometric model
    emi = 0.0
    lg_n, lg_ra, lg_cb = gammaln(n + 1), gammaln(ra + 1), gammaln(cb + 1)
    lg_nra, lg_ncb = gammaln(n - ra + 1), gammaln(n - cb + 1)
    for i, r in enumerate(ra):
        for j, c in enumerate(cb):
            lo, hi = int(max(1, r + c - n)), int(min(r, c))
            if hi < lo:
                continue
            nij = np.arange(lo, hi + 1, dtype=np.float64)
            term = nij / n * np.log(n * nij / (r * c))
            logp = (lg_ra[i] + lg_cb[j] + lg_nra[i] + lg_ncb[j] - lg_n - gammaln(nij + 1) - gammaln(r - nij + 1)
                    - gammaln(c - nij + 1) - gammaln(n - r - c + nij + 1))
            emi += float((term * np.exp(logp)).sum())
    h = 0.5 * (_entropy(ra) + _entropy(cb))
    denom = h - emi
    if abs(denom) < 1e-15:
        return 0.0
    return float((mi - emi) / denom)


def one_hot(codes: np.ndarray, num_codes: int) -> np.ndarray:
    """(N, Q) codes -> (N, Q * num_codes) one-hot features."""
    codes = np.asarray(codes)
    out = np.zeros((len(codes), codes.shape[1] * num_codes))
    rows = np.arange(len(codes))[:, None]
    out[rows, np.arange(codes.shape[1])[None] * num_codes + codes] = 1.0
    return out


def probe_r2(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
             ridge: float = 1e-2) -> float:
    """Test R² of a ridge linear probe, averaged over the target dimensions that vary on the test set (targets
    are standardised with the train statistics for conditioning only; R² itself is scale-free)."""
    mu, sd = y_train.mean(0), y_train.std(0)
    sd = np.where(sd > 1e-9, sd, 1.0)
    xa = np.hstack([x_train, np.ones((len(x_train), 1))])
    xb = np.hstack([x_test, np.ones((len(x_test), 1))])
    w = np.linalg.solve(xa.T @ xa + ridge * np.eye(xa.shape[1]), xa.T @ ((y_train - mu) / sd))
    pred = xb @ w * sd + mu
    total = ((y_test - y_test.mean(0)) ** 2).sum(0)
    keep = total > 1e-12
    if not keep.any():
        return 0.0
    return float(np.mean(1.0 - ((pred - y_test) ** 2).sum(0)[keep] / total[keep]))


def maneuver_class(motion: np.ndarray, turn_rad: float = 0.08, dv: float = 0.5) -> np.ndarray:
    """(N, 9) window ego motions (see data.ego_motion) -> (N,) class id = turn (left/straight/right) x speed
    (brake/keep/accelerate)."""
    motion = np.asarray(motion)
    turn = np.where(motion[:, 2] > turn_rad, 0, np.where(motion[:, 2] < -turn_rad, 2, 1))
    speed_change = motion[:, 7] - motion[:, 3]
    lon = np.where(speed_change < -dv, 0, np.where(speed_change > dv, 2, 1))
    return turn * 3 + lon



def pca_basis(rows: np.ndarray, components: int, max_rows: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), basis (D, components)) of ``rows`` (M, D), from an evenly spaced subset of at most ``max_rows``."""
    rows = np.asarray(rows)[np.linspace(0, len(rows) - 1, min(len(rows), max_rows)).astype(int)].astype(np.float64)
    mean = rows.mean(0)
    centred = rows - mean
    # eigenvectors of the (D, D) covariance: a few seconds where a full SVD of the rows takes minutes
    values, vectors = np.linalg.eigh(centred.T @ centred)
    return mean, vectors[:, np.argsort(values)[::-1][:components]]


def feature_ceiling(train: tuple[np.ndarray, np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray, np.ndarray],
                    ridge: float = 100.0) -> dict[str, float]:
    """Test R² of ridge probes from the frozen features to a target, fitted on train: ``frame`` reads frame t,
    ``change`` reads the change t -> t+Δ. ``train`` / ``test`` are (frame (N, T, c), change (N, T, c), y (N, k)),
    features already reduced per token (``pca_basis``); columns are standardised on train.

    Latents are inferred from the change (given frame t, the forward model already has it), so when ``change`` is
    ~0 for a target, no codebook can carry that target whatever the training: it says whether a failed probe is
    the model's fault or the features'."""
    out = {}
    for i, name in enumerate(("frame", "change")):
        a = np.asarray(train[i], dtype=np.float64).reshape(len(train[i]), -1)
        b = np.asarray(test[i], dtype=np.float64).reshape(len(test[i]), -1)
        sd = a.std(0) + 1e-9
        out[name] = probe_r2(a / sd, train[2], b / sd, test[2], ridge=ridge)
    return out
