"""Comfort (C) of NAVSIM v1.1's PDMS: six bounded signals computed on the 41 simulated rear-axle states.

Reproduces ``pdm_comfort_metrics.ego_is_comfortable`` (v1.1), quirks included, because they decide scores:

- accelerations are smoothed with ``savgol_filter(window=41, polyorder=2)`` (one quadratic over the whole 4 s);
- the jerks differentiate an acceleration smoothed with the *default* window 8 (even: SciPy centres the fit half a
  sample off) and then take ``savgol_filter(deriv=1, window=41, polyorder=2, delta=mean(dt))``;
- yaw rate / yaw acceleration use the default window 5 (the ``window_length=n_time`` argument is dropped in the
  official code), polyorder 2 / 3, on a heading made continuous by ``_phase_unwrap`` (round-based, not np.unwrap);
- every signal is rounded to 8 decimals; bounds are strict (``min < v < max``) at every time step.

Do not "fix" the even window: SciPy must stay a version that accepts it (pinned in pyproject.toml).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import savgol_filter

from latentvla.eval.state import DT, STATE_SIZE, StateIndex

# pdm_comfort_metrics.py module constants
MAX_ABS_MAG_JERK = 8.37  # [m/s^3]
MAX_ABS_LAT_ACCEL = 4.89  # [m/s^2]
MAX_LON_ACCEL = 2.40  # [m/s^2]
MIN_LON_ACCEL = -4.05  # [m/s^2]
MAX_ABS_YAW_ACCEL = 1.93  # [rad/s^2]
MAX_ABS_LON_JERK = 4.13  # [m/s^3]
MAX_ABS_YAW_RATE = 0.95  # [rad/s]

DECIMALS = 8
ACCEL_SMOOTHING_WINDOW = 8  # default of _extract_ego_acceleration, used before differentiating (even!)
DERIVATIVE_WINDOW = 5  # default of _approximate_derivatives, used for yaw rate / yaw acceleration

COMFORT_KEYS = ("lon_accel", "lat_accel", "jerk", "lon_jerk", "yaw_accel", "yaw_rate")


@lru_cache(maxsize=64)
def _savgol_operator(n: int, window_length: int, polyorder: int, deriv: int, delta: float) -> np.ndarray:
    """(n, n) matrix E with savgol_filter(x) == x @ E: the filter (mode "interp" included) is linear in x, so its
    impulse responses give it exactly; one matrix product then replaces the per-call edge fits (lstsq), which
    dominate the cost of savgol_filter on large batches."""
    return savgol_filter(np.eye(n), window_length=window_length, polyorder=polyorder, deriv=deriv, delta=delta,
                         axis=-1)


def savgol(x: np.ndarray, window_length: int, polyorder: int, deriv: int = 0, delta: float = 1.0) -> np.ndarray:
    """``scipy.signal.savgol_filter(x, window_length, polyorder, deriv, delta, axis=-1)`` (mode "interp"), batched
    as one matrix product; agrees with the direct call to ~1e-15 (the signals are then rounded to 8 decimals)."""
    x = np.asarray(x, dtype=np.float64)
    return x @ _savgol_operator(x.shape[-1], int(window_length), int(polyorder), int(deriv), float(delta))


def default_time_points(num_states: int) -> np.ndarray:
    """Time stamps [s] the scorer passes: ``arange(num_states) * interval_length``."""
    return np.arange(0, num_states).astype(np.float64) * DT


def acceleration_signal(states: np.ndarray, coordinate: str, window_length: int = ACCEL_SMOOTHING_WINDOW):
    """(B, T) smoothed acceleration along 'x', 'y' or 'magnitude' (hypot), rounded to 8 decimals."""
    n_time = states.shape[1]
    if coordinate == "x":
        accel = states[..., StateIndex.ACCELERATION_X]
    elif coordinate == "y":
        accel = states[..., StateIndex.ACCELERATION_Y]
    elif coordinate == "magnitude":
        accel = np.hypot(states[..., StateIndex.ACCELERATION_X], states[..., StateIndex.ACCELERATION_Y])
    else:
        raise ValueError(f"acceleration coordinate '{coordinate}' not available; use x, y or magnitude")
    accel = savgol(accel, window_length=min(window_length, n_time), polyorder=2)
    return np.round(accel, decimals=DECIMALS)


def _approximate_derivatives(y: np.ndarray, x: np.ndarray, window_length: int, poly_order: int, deriv_order: int):
    """Savitzky-Golay derivative along the last axis with ``delta = mean(diff(x))`` (x equally spaced)."""
    window_length = min(window_length, len(x))
    if not poly_order < window_length:
        raise ValueError(f"{poly_order} < {window_length} does not hold!")
    dx = np.diff(x, axis=-1)
    if not (dx > 0).all():
        raise RuntimeError("dx is not monotonically increasing!")
    return savgol(y, window_length=window_length, polyorder=poly_order, deriv=deriv_order, delta=float(dx.mean()))


def jerk_signal(states: np.ndarray, coordinate: str, time_points_s: np.ndarray | None = None,
                derivative_window: int | None = None) -> np.ndarray:
    """(B, T) jerk: window-8 smoothed acceleration, then a first derivative over ``derivative_window`` steps
    (v1.1: n_time; NAVSIM v2 passes 15, capped at n_time); rounded."""
    n_time = states.shape[1]
    time_points_s = default_time_points(n_time) if time_points_s is None else np.asarray(time_points_s)
    accel = acceleration_signal(states, coordinate)  # default (even) window 8
    window = n_time if derivative_window is None else min(derivative_window, n_time)
    jerk = _approximate_derivatives(accel, time_points_s, window_length=window, poly_order=2, deriv_order=1)
    return np.round(jerk, decimals=DECIMALS)


def phase_unwrap(headings: np.ndarray) -> np.ndarray:
    """Headings shifted by multiples of 2π so successive differences are within ±π (round of diff / 2π)."""
    two_pi = 2.0 * np.pi
    adjustments = np.zeros_like(headings)
    adjustments[..., 1:] = np.cumsum(np.round(np.diff(headings, axis=-1) / two_pi), axis=-1)
    return headings - two_pi * adjustments


def yaw_signal(states: np.ndarray, deriv_order: int, time_points_s: np.ndarray | None = None,
               poly_order: int | None = None) -> np.ndarray:
    """(B, T) yaw rate (deriv 1, poly 2) or yaw acceleration (deriv 2, poly 3 unless ``poly_order`` is given:
    NAVSIM v2's extended comfort uses poly 2), window 5, rounded."""
    n_time = states.shape[1]
    time_points_s = default_time_points(n_time) if time_points_s is None else np.asarray(time_points_s)
    poly_order = {1: 2, 2: 3}[deriv_order] if poly_order is None else poly_order
    headings = phase_unwrap(states[..., StateIndex.HEADING])
    yaw = _approximate_derivatives(
        headings, time_points_s, window_length=DERIVATIVE_WINDOW, poly_order=poly_order, deriv_order=deriv_order
    )
    return np.round(yaw, decimals=DECIMALS)


def _within_bound(values: np.ndarray, min_bound: float, max_bound: float) -> np.ndarray:
    """True where every time step is strictly inside (min_bound, max_bound)."""
    return np.all((values > min_bound) & (values < max_bound), axis=-1)


def comfort_flags(states: np.ndarray, time_points_s: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The six checks of ``ego_is_comfortable`` on simulated states (B, T, 11): each (B,) bool, True = pass."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 3 or states.shape[-1] != STATE_SIZE:
        raise ValueError(f"states must have shape (B, T, {STATE_SIZE}), got {states.shape}")
    n_time = states.shape[1]
    time_points_s = default_time_points(n_time) if time_points_s is None else np.asarray(time_points_s)
    if len(time_points_s) != n_time:
        raise ValueError("time_points_s must have one entry per state")

    lon_accel = acceleration_signal(states, "x", window_length=n_time)
    lat_accel = acceleration_signal(states, "y", window_length=n_time)
    return {
        "lon_accel": _within_bound(lon_accel, MIN_LON_ACCEL, MAX_LON_ACCEL),
        "lat_accel": _within_bound(lat_accel, -MAX_ABS_LAT_ACCEL, MAX_ABS_LAT_ACCEL),
        "jerk": _within_bound(
            jerk_signal(states, "magnitude", time_points_s), -MAX_ABS_MAG_JERK, MAX_ABS_MAG_JERK
        ),
        "lon_jerk": _within_bound(jerk_signal(states, "x", time_points_s), -MAX_ABS_LON_JERK, MAX_ABS_LON_JERK),
        "yaw_accel": _within_bound(yaw_signal(states, 2, time_points_s), -MAX_ABS_YAW_ACCEL, MAX_ABS_YAW_ACCEL),
        "yaw_rate": _within_bound(yaw_signal(states, 1, time_points_s), -MAX_ABS_YAW_RATE, MAX_ABS_YAW_RATE),
    }


def comfort(states: np.ndarray, time_points_s: np.ndarray | None = None) -> np.ndarray:
    """C ∈ {0.0, 1.0} per proposal (B,): 1.0 iff all six checks pass at all time steps."""
    flags = comfort_flags(states, time_points_s)
    return np.all(np.stack([flags[key] for key in COMFORT_KEYS], axis=-1), axis=-1).astype(np.float64)
