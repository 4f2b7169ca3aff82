"""``latentvla viz rollout``: a closed-loop rollout as a GIF or MP4, BEV beside the front camera.

Each frame (one per ``every`` 10 Hz steps): the BEV in the ego's frame of that moment (map, stop lines in their
light's colour, road users, the agent's current plan, the expert's path from the same restart dashed, the path the
ego has driven) and the front camera the agent would see, rendered by the world's own renderer. The rollout is the
one `latentvla eval closed-loop` scores (same restart, tracker and traffic).
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from latentvla.closedloop.rollout import EXPERT, Rollout, SensorRig  # noqa: E402
from latentvla.closedloop.runner import (  # noqa: E402
    ClosedLoopError,
    check_agent,
    expert_reference,
    world_sensors,
)
from latentvla.closedloop.sim import rear_to_center  # noqa: E402
from latentvla.eval.runner import plan_inputs  # noqa: E402
from latentvla.schema import TrafficLightStatus  # noqa: E402
from latentvla.viz.bev import draw_ego, draw_map, draw_trajectory, setup_bev_axes, to_ego  # noqa: E402
from latentvla.world.record import boxes_for_render  # noqa: E402

FRONT = "cam_f0"
RADIUS = 40.0
FORMATS = (".gif", ".mp4")


def _lights(sim) -> list[TrafficLightStatus]:
    return [TrafficLightStatus(lid, sim.light(lane.traffic_light_id)) for lid, lane in sorted(sim.map.lanes.items())
            if lane.traffic_light_id]


def _frame(r: Rollout, front: SensorRig, expert_path: np.ndarray, title: str) -> np.ndarray:
    """One RGB frame (H, W, 3) of the rollout as it is now."""
    from latentvla.viz.bev import draw_boxes

    sim, pose = r.sim, r.ego[r.k, :3]
    fig = Figure(figsize=(8.0, 4.0), dpi=90)
    ax = fig.add_axes((0.02, 0.02, 0.46, 0.86))
    setup_bev_axes(ax, RADIUS)
    draw_map(ax, r.map, pose, RADIUS, traffic_lights=_lights(sim), route_roadblock_ids=sim.route)
    others = boxes_for_render(sim)
    boxes = []
    for b in others:
        xy = to_ego(np.array([[b["x"], b["y"]]]), pose)[0]
        boxes.append([xy[0], xy[1], 0.0, b["length"], b["width"], b["height"], b["heading"] - pose[2]])
    names = [b["kind"] for b in others]
    draw_boxes(ax, np.array(boxes).reshape(-1, 7), names)
    draw_ego(ax)
    draw_trajectory(ax, to_ego(expert_path, pose), color="#2ca02c", lw=1.0, ls="--", marker=None, from_origin=False,
                    label="expert")
    driven = to_ego(r.ego[: r.k + 1, :2], pose)
    draw_trajectory(ax, driven, color="#555555", lw=1.2, marker=None, from_origin=False, label="driven")
    if r.plans:
        draw_trajectory(ax, to_ego(r.plans[-1][1][:, :2], pose), color="#d62728", label="plan")
    ax.legend(loc="upper right", fontsize=6)
    cam_ax = fig.add_axes((0.5, 0.2, 0.49, 0.6))
    cams, _ = front.render(sim, lidar=False)
    cam_ax.imshow(cams[FRONT].image)
    cam_ax.set_axis_off()
    fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    img = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[..., ::-1])


def write_video(frames: list[np.ndarray], out: Path, fps: float) -> None:
    """GIF (Pillow) or MP4 (OpenCV, mp4v), written to a temporary sibling then renamed."""
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    if out.suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)
    else:
        h, w = frames[0].shape[:2]
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
        if not writer.isOpened():
            raise ClosedLoopError(f"OpenCV cannot write MP4 here; write a GIF instead (--out {out.with_suffix('.gif')})")
        for f in frames:
            writer.write(np.ascontiguousarray(f[..., ::-1]))
        writer.release()
    os.replace(tmp, out)


def render_rollout(data: str | Path, agent_spec: str, token: str, out: str | Path, seconds: float = 15.0,
                   reactive: bool = True, every: int = 1) -> dict:
    """Roll the scene out with the agent and write the video; returns what was drawn and how it went."""
    from latentvla.agents.registry import load_agent
    from latentvla.closedloop.metrics import scene_metrics
    from latentvla.data.store import open_store

    out = Path(out)
    if out.suffix not in FORMATS:
        raise ClosedLoopError(f"--out {out}: the video must end in {' or '.join(FORMATS)}")
    if every < 1:
        raise ClosedLoopError(f"--every must be >= 1, got {every}")
    store = open_store(data, verify_blobs=False)
    sensors = world_sensors(store)
    if token not in set(store.tokens()):
        raise ClosedLoopError(f"scene '{token}' is not in {data}; list tokens with `latentvla world stats {data}` "
                              f"or the manifest")
    agent = None if agent_spec == EXPERT else load_agent(agent_spec)
    check_agent(agent)
    ref_rec, line, expert_progress = expert_reference(store, token, reactive, seconds)
    expert_path = np.stack([rear_to_center(s) for s in ref_rec.ego])[:, :2]
    r = Rollout(store, token, sensors, EXPERT if agent is None else agent.sensors, reactive, seconds)
    if FRONT not in sensors.cameras:
        raise ClosedLoopError(f"{data} has no {FRONT} camera (cameras: {sensors.cameras})")
    front = SensorRig(replace(sensors, cameras=[FRONT]), r.map, r.sim.props)
    name = EXPERT if agent is None else agent.name
    frames = []
    while True:
        if r.needs_plan:
            plan = plan_inputs(agent, [r.agent_input()])[0]
            if isinstance(plan, Exception):
                raise ClosedLoopError(f"agent {name} failed on scene {token} at t={r.k / 10:.1f} s: {plan}")
            r.set_plan(plan)
        if r.k % every == 0 or r.done:
            frames.append(_frame(r, front, expert_path, f"{name} - scene {token} ({store.info(token)['family']}) - "
                                                         f"t={r.k / 10:.1f} s, v={r.ego[r.k, 3]:.1f} m/s"))
        if r.done:
            break
        r.advance(1)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_video(frames, out, fps=10.0 / every)
    row = scene_metrics(r.record(), r.map, line, expert_progress)
    return {"out": str(out), "frames": len(frames), "agent": name, "token": token, "metrics": row}
