"""``latentvla world show --agent``: a planner's plan (and iPad's scored proposals) on the scene figure."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from matplotlib.figure import Figure

from latentvla.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ipad_run(tiny_world, cache_dir, runner, tmp_path_factory, planner_cache_root):
    """One quick-profile iPad run (a single epoch: the picture needs a valid run, not a good one)."""
    out = tmp_path_factory.mktemp("planner_viz") / "ipad"
    res = runner.invoke(app, ["planner", "train", "--data", str(tiny_world), "--host", "ipad", "--out", str(out),
                              "--profile", "quick", "--workers", "1", "--quiet", "--metric-cache-dir",
                              str(cache_dir), "--cache-dir", str(planner_cache_root), "--set", "train.epochs=1"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def token(tiny_store):
    return tiny_store.tokens("test")[0]


@pytest.fixture(scope="module")
def plain_png(tiny_world, token, runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "scene.png"
    res = runner.invoke(app, ["world", "show", str(tiny_world), "--scene", token, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return _read(out)


def _read(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} does not decode"
    return img


def _show(runner, data, token, out, *extra):
    return runner.invoke(app, ["world", "show", str(data), "--scene", token, "--out", str(out), *extra])


def test_ipad_run_plan_and_proposals_drawn(ipad_run, tiny_world, token, plain_png, runner, cache_dir, tmp_path):
    out = tmp_path / "ipad.png"
    res = _show(runner, tiny_world, token, out, "--agent", str(ipad_run), "--cache-dir", str(cache_dir))
    assert res.exit_code == 0, res.output
    assert "proposals" in res.output and "selected #" in res.output
    img = _read(out)
    assert img.shape == plain_png.shape  # same layout: the colorbar sits inside the BEV panel
    assert np.abs(img.astype(np.int16) - plain_png.astype(np.int16)).sum(-1).astype(bool).mean() > 0.002


def test_plan_for_scene_keeps_ipad_outputs(ipad_run, tiny_world, token, tiny_store):
    from latentvla.planner.agent import PlannerAgent
    from latentvla.viz.planner_overlay import plan_for_scene

    plan = plan_for_scene(tiny_world, str(ipad_run), token)
    n = PlannerAgent(ipad_run).cfg.ipad.num_proposals
    assert plan.trajectory.shape == (8, 3) and plan.proposals.shape == (n, 8, 3) and plan.scores.shape == (n,)
    assert plan.selected == int(np.argmax(plan.scores))
    np.testing.assert_allclose(plan.trajectory, plan.proposals[plan.selected], atol=1e-5)
    expected = PlannerAgent(ipad_run).plan([tiny_store.load_agent_input(token)])["trajectory"][0]
    np.testing.assert_allclose(plan.trajectory, expected, atol=1e-5)


def test_draw_proposals_colours_by_score():
    from latentvla.viz.bev import setup_bev_axes
    from latentvla.viz.planner_overlay import draw_proposals

    t = np.arange(1, 9, dtype=np.float64)[:, None]
    proposals = np.stack([np.concatenate([t * 4.0, t * lat, np.zeros_like(t)], 1) for lat in (-1.0, 0.0, 1.0)])
    scores = np.array([-3.0, -0.5, -1.0])
    fig = Figure()
    ax = fig.add_subplot()
    setup_bev_axes(ax, 40.0)
    lines = draw_proposals(ax, proposals, scores, selected=1)
    segs = lines.get_segments()
    assert len(segs) == 3 and len(ax.child_axes) == 1  # the colorbar, inset
    # drawn worst first; plot coordinates are (ego y, ego x) from the origin
    np.testing.assert_allclose(segs[-1][1:], proposals[1][:, [1, 0]])
    np.testing.assert_allclose(segs[0][0], [0.0, 0.0])
    colors = lines.get_colors()
    assert not np.allclose(colors[0], colors[-1])
    labels = ax.get_legend_handles_labels()[1]
    assert "3 proposals" in labels and any(lab.startswith("selected proposal #1") for lab in labels)
    with pytest.raises(ValueError, match="proposals must be"):
        draw_proposals(ax, proposals, scores[:2])


def test_baseline_agent_plan(tiny_world, token, plain_png, runner, tmp_path):
    out = tmp_path / "cv.png"
    res = _show(runner, tiny_world, token, out, "--agent", "constant-velocity")
    assert res.exit_code == 0, res.output
    assert "constant-velocity" in res.output and "proposals" not in res.output
    img = _read(out)
    assert img.shape == plain_png.shape and not np.array_equal(img, plain_png)


def test_privileged_agent_uses_metric_cache(tiny_world, token, runner, cache_dir, tmp_path):
    out = tmp_path / "lr.png"
    res = _show(runner, tiny_world, token, out, "--agent", "log-replay", "--cache-dir", str(cache_dir))
    assert res.exit_code == 0, res.output
    assert _read(out).shape[2] == 3


def test_unknown_agent_exits_2(tiny_world, token, runner, tmp_path):
    out = tmp_path / "bad.png"
    res = _show(runner, tiny_world, token, out, "--agent", "no-such-agent")
    assert res.exit_code == 2
    assert "unknown agent 'no-such-agent'" in res.output and "constant-velocity" in res.output
    assert not out.exists()
