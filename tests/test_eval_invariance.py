"""Every PDMS and EPDMS sub-score is invariant to a global rotation and translation of the whole scene (property test)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentvla.eval.epdms import score_epdms_log
from latentvla.eval.scene_score import score_pdms_batch


def _cv(inputs) -> np.ndarray:
    v = float(np.hypot(*inputs.initial_state[3:5]))
    t = np.arange(1, 9) * 0.5
    return np.stack([v * t, 0.3 * t, 0.02 * t], 1)  # drifts left a little: exercises DAC / lanes


@pytest.fixture(scope="module")
def scenes(tiny_cache):
    toks = tiny_cache.tokens[::9][:6]
    return [tiny_cache.load(t) for t in toks]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rotation=st.floats(-np.pi, np.pi), dx=st.floats(-5000, 5000), dy=st.floats(-5000, 5000))
def test_pdms_invariant_to_rigid_motion(scenes, rotation, dx, dy):
    moved = [s.transformed(rotation, np.array([dx, dy])) for s in scenes]
    for plan in ("human", "cv"):
        poses = [s.human_poses if plan == "human" else _cv(s) for s in scenes]
        for fn in (score_pdms_batch, score_epdms_log):
            a = fn(scenes, poses)
            b = fn(moved, poses)
            for ra, rb in zip(a, b):
                for key in ra:
                    assert rb[key] == pytest.approx(ra[key], abs=1e-6, nan_ok=True), (fn.__name__, plan, key)


def test_transform_moves_geometry(scenes):
    s = scenes[0]
    m = s.transformed(np.pi / 2, np.array([10.0, 0.0]))
    x, y = s.initial_state[:2]
    assert m.initial_state[:2] == pytest.approx([10.0 - y, x])
    assert m.centerline[0] == pytest.approx([10.0 - s.centerline[0, 1], s.centerline[0, 0]])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_plan_scores_within_range(scenes, data):
    """Arbitrary finite plans (reversing, swerving, standing still) give sub-scores in [0, 1] and consistent totals."""
    coords = st.floats(-60, 60, allow_nan=False, allow_infinity=False)
    poses = [np.array(data.draw(st.lists(st.tuples(coords, coords, st.floats(-3.1, 3.1)), min_size=8, max_size=8)))
             for _ in scenes]
    for row in score_pdms_batch(scenes, poses):
        assert all(0.0 <= v <= 1.0 for v in row.values()), row
        expected = row["nc"] * row["dac"] * (5 * row["ttc"] + 5 * row["ep"] + 2 * row["c"]) / 12
        assert row["pdms"] == pytest.approx(expected)
    for row in score_epdms_log(scenes, poses):
        assert all(0.0 <= v <= 1.0 for k, v in row.items() if not np.isnan(v)), row
