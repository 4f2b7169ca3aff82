"""Closed-loop evaluation in the embedded world: the restart is faithful (the expert replays its log, the rendered
sensors equal the logged ones), the tracker follows a plan, traffic reacts only in reactive mode, pedestrians wait
for the ego, the metrics match hand-computed values, and `latentvla eval closed-loop` keeps its JSON contract and
gives the same numbers whatever the worker count."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentvla.cli import app
from latentvla.closedloop.metrics import (
    KEYS,
    closed_loop_score,
    progress_along,
    red_light_events,
    window_starts,
)
from latentvla.closedloop.rollout import EXPERT, Rollout
from latentvla.closedloop.runner import world_sensors
from latentvla.closedloop.sim import ClosedLoopSim
from latentvla.eval.runner import plan_inputs
from latentvla.map_api import Lane, MapAPI
from latentvla.schema import EGO, Trajectory, global_to_local
from latentvla.world.agents import Agent

pytestmark = pytest.mark.usefixtures("one_thread")
SCENES, SECONDS = 10, 6


@pytest.fixture(scope="module")
def results(tiny_world, runner, tmp_path_factory):
    out = tmp_path_factory.mktemp("closed_loop")
    res = {}
    for agent, workers in (("expert", 1), ("constant-velocity", 1), ("expert", 2)):
        path = out / f"{agent}-{workers}.json"
        r = runner.invoke(app, ["eval", "closed-loop", "--data", str(tiny_world), "--agent", agent, "--out", str(path),
                                "--seconds", str(SECONDS), "--scenes", str(SCENES), "--workers", str(workers),
                                "--quiet"])
        assert r.exit_code == 0, r.output
        assert "closed loop" in r.output and "wrote" in r.output
        res[(agent, workers)] = json.loads(path.read_text())
    return res


def test_contract_keys_and_expert_vs_constant_velocity(results, tiny_store):
    expert, cv = results[("expert", 1)], results[("constant-velocity", 1)]
    for doc in (expert, cv):
        assert set(KEYS) <= set(doc["mean"]) and doc["scenes"] == SCENES and doc["invalid"] == 0
        assert doc["mode"] == "reactive" and doc["seconds"] == SECONDS and doc["split"] == "test"
        for row in doc["per_scene"]:
            assert set(KEYS) <= set(row) and row["family"] == tiny_store.info(row["token"])["family"]
            assert row["closed_loop_score"] == pytest.approx(closed_loop_score(
                row["nc"], row["dac"], row["red_light_violations"] > 0, row["route_completion"], row["ttc"],
                row["c"]))
        for fam, vals in doc["by_family"].items():
            rows = [r for r in doc["per_scene"] if r["family"] == fam]
            assert vals["scenes"] == len(rows)
            assert vals["closed_loop_score"] == pytest.approx(np.mean([r["closed_loop_score"] for r in rows]))
    # the family-balanced subset: round-robin over the split's families
    fams = {tiny_store.info(t)["family"] for t in tiny_store.tokens("test")}
    assert len(expert["by_family"]) == min(len(fams), SCENES)
    # the expert is the route-completion reference and drives its own world safely
    assert expert["mean"]["route_completion"] == 1.0 and expert["mean"]["collision_rate"] == 0.0
    assert expert["mean"]["closed_loop_score"] >= 0.9 and expert["mean"]["red_light_violations"] == 0
    assert cv["mean"]["closed_loop_score"] < expert["mean"]["closed_loop_score"]
    assert expert["timing"]["realtime_factor"] > 0 and "manifest" in json.dumps(expert["provenance"])


def test_same_numbers_whatever_the_workers(results):
    one, two = results[("expert", 1)], results[("expert", 2)]
    assert one["per_scene"] == two["per_scene"] and one["mean"] == two["mean"]


def test_restart_replays_the_log(tiny_store):
    """Non-reactive expert rollout = the recorded log, pose for pose, at every 2 Hz frame."""
    token = tiny_store.tokens("test")[0]
    r = Rollout(tiny_store, token, None, EXPERT, reactive=False, seconds=5)
    r.advance(r.steps)
    scene = tiny_store.load_scene(token)
    for i, frame in enumerate(scene.frames[3:]):
        np.testing.assert_allclose(r.ego[5 * i, :3], frame.ego_status.ego_pose, atol=1e-9)


def test_rendered_sensors_equal_the_logged_ones_at_the_restart(tiny_world, tiny_store):
    token = tiny_store.tokens("test")[1]
    r = Rollout(tiny_store, token, world_sensors(tiny_store), "current", reactive=True, seconds=4)
    logged = r.agent_input()
    cams, lidar = r.rig.render(r.sim)
    assert set(cams) == set(logged.cameras[-1])
    for name, cam in logged.cameras[-1].items():
        assert np.array_equal(cam.image, cams[name].image), name
    assert np.array_equal(logged.lidars[-1].points, lidar.points)
    assert logged.current.command == tiny_store.load_agent_input(token, sensors=False).current.command


def test_tracking_the_expert_plan_follows_the_expert(tiny_store):
    """Replanning with the expert's own future (in the current frame) keeps the tracked ego on the expert's path;
    the agent input after the restart has the NAVSIM layout (current pose at the origin, 4 statuses)."""
    token = tiny_store.tokens("test")[2]
    ref = Rollout(tiny_store, token, None, EXPERT, reactive=True, seconds=8)
    ref.advance(ref.steps)
    r = Rollout(tiny_store, token, None, "none", reactive=True, seconds=4)
    while not r.done:
        if r.needs_plan:
            inp = r.agent_input()
            assert len(inp.ego_statuses) == 4 and np.allclose(inp.current.ego_pose, 0.0, atol=1e-5)
            future = ref.ego[[r.k + 5 * i for i in range(1, 9)], :3]
            r.set_plan(global_to_local(future, r.ego[r.k, :3]))
        r.advance()
    err = np.hypot(*(r.ego[:, :2] - ref.ego[: r.steps + 1, :2]).T)
    assert err.max() < 0.6 and len(r.plans) == 8


def _stopped_ego_with_follower(store, reactive: bool) -> bool:
    """A follower 25 m behind an ego that stands still: does it run into the ego?"""
    for token in store.tokens("test"):
        state = store.load_sim_state(token)
        ego = state["agents"][0]
        if ego["s"] > 30 and ego["v"] > 5 and not ego["lane_changes"]:
            break
    else:
        pytest.skip("no moving ego far enough from its lane start")
    follower = {**ego, "id": "follower", "kind": "vehicle", "s": ego["s"] - 25.0, "behavior": {}, "lane_changes": []}
    state = {**state, "agents": [ego, follower] + [a for a in state["agents"][1:]
                                                  if a["kind"] not in ("vehicle", "bicycle")], "spawns": []}
    m = store.load_map(store.info(token)["log"])
    start = ClosedLoopSim(m, state).ego_rear_state()
    start[3:] = 0.0  # the ego stands still from the restart on
    sim = ClosedLoopSim(m, state, start, reactive=reactive)
    hit = False
    for _ in range(60):
        sim.step()
        sim.set_ego_state(start)
        hit |= any("follower" in v for v in sim.violations())
    return hit


def test_traffic_reacts_to_the_ego_only_in_reactive_mode(tiny_store):
    assert not _stopped_ego_with_follower(tiny_store, reactive=True)  # IDM brakes for the standing ego
    assert _stopped_ego_with_follower(tiny_store, reactive=False)  # the log's follower drives on


def test_pedestrian_waits_before_stepping_in_front_of_the_ego(tiny_store):
    token = tiny_store.tokens("test")[0]
    m = tiny_store.load_map(tiny_store.info(token)["log"])
    state = tiny_store.load_sim_state(token)
    probe = ClosedLoopSim(m, state)
    x, y, h = probe.pose(probe.ego)
    c, s = np.cos(h), np.sin(h)
    ahead = np.array([x, y]) + 12.0 * np.array([c, s])
    side = np.array([-s, c])
    path = [list(ahead + 4.0 * side), list(ahead - 4.0 * side)]  # crosses the ego's lane 12 m ahead
    ped = Agent(id="ped_x", kind="pedestrian", length=0.5, width=0.6, height=1.7, color=(1, 2, 3), points=path,
                behavior={"type": "walk", "speed": 1.3, "started": True}).to_dict()
    state = {**state, "agents": state["agents"] + [ped]}
    walked = {}
    for reactive in (True, False):
        ego = ClosedLoopSim(m, state).ego_rear_state()
        sim = ClosedLoopSim(m, state, ego, reactive=reactive)
        for _ in range(10):
            sim.step()
            sim.set_ego_state(ego)  # the ego keeps its speed and place: always about to pass
        walked[reactive] = next(a for a in sim.agents if a.id == "ped_x").s
    # reactive: it walks up to the ego's corridor (4 m minus half the ego's width, the margin and its 1.2 m look
    # ahead) and waits there; non-reactive: it walks on at 1.3 m/s
    edge = 4.0 - (probe.ego.width / 2 + 1.0) - 1.2
    assert edge <= walked[True] <= edge + 0.13 + 1e-9 and walked[False] == pytest.approx(1.3, abs=1e-6)
    # a stopped ego lets the pedestrian go
    ego = ClosedLoopSim(m, state).ego_rear_state()
    ego[3] = 0.0
    sim = ClosedLoopSim(m, state, ego, reactive=True)
    sim.step()
    assert next(a for a in sim.agents if a.id == "ped_x").s > 0


def _crossing_map() -> MapAPI:
    cl = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    lane = Lane("c1", cl, cl + [0, 1.75], cl - [0, 1.75], "rb_c", is_connector=True, traffic_light_id="g")
    return MapAPI("toy", {"c1": lane})


def test_red_light_violation_golden():
    """Rear axle from x = -20 at 5 m/s along the connector: the front bumper (rear axle + 1.461 + 5.176 / 2 m)
    crosses the stop line at x = 0 first at step 32 (t = 3.2 s)."""
    t = np.arange(61) * 0.1
    states = np.zeros((61, 11))
    states[:, 0], states[:, 3] = -20.0 + 5.0 * t, 5.0
    lights = {"cycle": [["g", "green", 10.0], ["other", "green", 10.0]]}  # g: green [0, 10), red [10, 20)
    front = -20.0 + 5.0 * 3.2 + EGO.rear_axle_to_center + EGO.length / 2
    assert front >= 0 > front - 0.5
    green = red_light_events(states, _crossing_map(), lights, t0=0.0)
    assert green == [{"t": 3.2, "connector": "c1", "light": "green", "violation": False}]
    red = red_light_events(states, _crossing_map(), lights, t0=8.0)  # crossing at world time 11.2 s
    assert red == [{"t": 3.2, "connector": "c1", "light": "red", "violation": True}]
    backwards = states.copy()
    backwards[:, 2] = np.pi  # driving the other way over it is no crossing of this stop line
    backwards[:, 0] = 20.0 - 5.0 * t
    assert red_light_events(backwards, _crossing_map(), lights, t0=8.0) == []


def test_metric_helpers_golden():
    assert window_starts(151) == [0, 40, 80, 110] and window_starts(41) == [0] and window_starts(61) == [0, 20]
    assert window_starts(121) == [0, 40, 80]
    assert closed_loop_score(1.0, 1.0, False, 0.5, 1.0, 0.0) == pytest.approx(7.5 / 12)
    assert closed_loop_score(0.5, 1.0, False, 1.0, 1.0, 1.0) == pytest.approx(0.5)
    assert closed_loop_score(1.0, 1.0, True, 1.0, 1.0, 1.0) == 0.0
    line = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    assert progress_along(line, np.array([0.0, 0.0]), np.array([10.5, 4.0])) == pytest.approx(14.0)
    assert progress_along(line, np.array([5.0, 0.0]), np.array([1.0, 0.0])) == 0.0


class _Flaky:
    name, requires_scene, sensors = "flaky", False, "none"

    def compute_trajectory(self, agent_input, scene=None):
        if agent_input.token == "bad":
            raise RuntimeError("boom")
        return Trajectory(np.zeros((8, 3)))


def test_an_agent_failure_fails_its_scene_only():
    from latentvla.schema import AgentInput

    out = plan_inputs(_Flaky(), [AgentInput([], [], [], "ok"), AgentInput([], [], [], "bad")])
    assert out[0].shape == (8, 3) and isinstance(out[1], RuntimeError)


@pytest.mark.parametrize("args,message", [
    (["--agent", "log-replay"], "privileged"),
    (["--agent", "expert", "--seconds", "2"], "--seconds must be >= 4"),
    (["--agent", "nope"], "unknown agent 'nope'"),
])
def test_clear_errors(tiny_world, runner, tmp_path, args, message):
    r = runner.invoke(app, ["eval", "closed-loop", "--data", str(tiny_world), "--out", str(tmp_path / "x.json"),
                            "--quiet", *args])
    assert r.exit_code != 0 and message in r.output, r.output


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_viz_rollout_writes_a_video(tiny_world, tiny_store, runner, tmp_path, suffix):
    import cv2
    from PIL import Image

    token = tiny_store.tokens("test")[3]
    out = tmp_path / f"rollout{suffix}"
    r = runner.invoke(app, ["viz", "rollout", "--data", str(tiny_world), "--agent", "constant-velocity", "--scene",
                            token, "--out", str(out), "--seconds", "4", "--every", "10"])
    assert r.exit_code == 0, r.output
    assert "5 frames" in r.output and "closed_loop_score" in r.output
    if suffix == ".gif":
        with Image.open(out) as im:
            assert im.n_frames == 5 and im.size[0] > im.size[1]  # BEV beside the camera
    else:
        cap = cv2.VideoCapture(str(out))
        ok, frame = cap.read()
        assert ok and frame.shape[1] > frame.shape[0] and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    bad = runner.invoke(app, ["viz", "rollout", "--data", str(tiny_world), "--agent", "expert", "--scene", token,
                              "--out", str(tmp_path / "x.avi")])
    assert bad.exit_code != 0 and ".gif or .mp4" in bad.output


def test_a_killed_run_resumes_without_redoing_finished_jobs(tiny_world, tmp_path, monkeypatch):
    from interrupt import dies_on_call

    import latentvla.closedloop.runner as closed_loop

    monkeypatch.setattr(closed_loop, "CHUNK_SCENES", 2)
    real = closed_loop.run_chunk
    kwargs = {"seconds": 4, "scenes": 6, "workers": 1, "quiet": True}
    whole = closed_loop.evaluate_closed_loop(tiny_world, "constant-velocity", tmp_path / "whole.json", **kwargs)
    out = tmp_path / "cl.json"
    first: list = []
    monkeypatch.setattr(closed_loop, "run_chunk", dies_on_call(real, 2, first))
    with pytest.raises(KeyboardInterrupt):
        closed_loop.evaluate_closed_loop(tiny_world, "constant-velocity", out, **kwargs)
    assert not out.exists() and len(list((tmp_path / ".cl.json.partial").glob("*.pkl"))) == 1
    second: list = []
    monkeypatch.setattr(closed_loop, "run_chunk", dies_on_call(real, 0, second))
    res = closed_loop.evaluate_closed_loop(tiny_world, "constant-velocity", out, **kwargs)
    assert second[0].tokens == first[1].tokens  # the killed job runs again, the finished one does not
    assert len(second) == 2 and res["timing"]["resumed_scenes"] == 2
    assert res["per_scene"] == whole["per_scene"] and not (tmp_path / ".cl.json.partial").exists()


def test_a_predictions_file_cannot_drive(tiny_world, tiny_store, runner, tmp_path):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({tiny_store.tokens("test")[0]: [[1.0 * k, 0.0, 0.0] for k in range(1, 9)]}))
    r = runner.invoke(app, ["eval", "closed-loop", "--data", str(tiny_world), "--out", str(tmp_path / "x.json"),
                            "--agent", f"predictions:{preds}", "--quiet"])
    assert r.exit_code != 0 and "replans from what it sees" in r.output, r.output
