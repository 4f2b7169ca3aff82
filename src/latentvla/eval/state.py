"""The ego state array shared by the interpolator, the LQR tracker / bicycle model and the comfort checks.

The layout is the one of NAVSIM's PDM code (``pdm_enums.StateIndex``, v1.1): 11 variables per time step, poses of
the *rear axle* in the global frame, velocities and accelerations in the ego (rear-axle) frame. Keeping the exact
order lets arrays be compared one-to-one with the official scorer's ``ego_state_to_state_array`` output.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from latentvla.schema import EGO


class StateIndex(IntEnum):
    """Index of each ego state variable in a ``(..., 11)`` state array (PDM order)."""

    X = 0  # [m] rear axle, global
    Y = 1  # [m]
    HEADING = 2  # [rad]
    VELOCITY_X = 3  # [m/s] ego frame
    VELOCITY_Y = 4  # [m/s]
    ACCELERATION_X = 5  # [m/s^2] ego frame
    ACCELERATION_Y = 6  # [m/s^2]
    STEERING_ANGLE = 7  # [rad] tyre angle
    STEERING_RATE = 8  # [rad/s]
    ANGULAR_VELOCITY = 9  # [rad/s]
    ANGULAR_ACCELERATION = 10  # [rad/s^2]


STATE_SIZE = len(StateIndex)
SE2 = slice(StateIndex.X, StateIndex.HEADING + 1)  # (x, y, heading)

DT = 0.1  # [s] proposal / simulation step (TrajectorySampling(num_poses=40, interval_length=0.1))
NUM_STATES = 41  # 0.0 ... 4.0 s, the initial state included
HORIZON_S = (NUM_STATES - 1) * DT

# Chrysler Pacifica, nuPlan's get_pacifica_parameters() (same numbers as latentvla.schema.EGO).
WHEEL_BASE = EGO.wheel_base  # 3.089 m
REAR_AXLE_TO_CENTER = EGO.rear_axle_to_center  # 1.461 m
VEHICLE_LENGTH = EGO.length  # 5.176 m
VEHICLE_WIDTH = EGO.width  # 2.297 m


def principal_value(angle: np.ndarray | float, min_: float = -np.pi) -> np.ndarray:
    """Wrap to [min_, min_ + 2π) exactly as nuPlan's ``principal_value`` (modulo form, not arctan2)."""
    return (np.asarray(angle, dtype=np.float64) - min_) % (2 * np.pi) + min_


def normalize_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wrap to [-π, π] exactly as PDM's ``normalize_angle`` (arctan2 form, used by the LQR tracker)."""
    angle = np.asarray(angle, dtype=np.float64)
    return np.arctan2(np.sin(angle), np.cos(angle))
