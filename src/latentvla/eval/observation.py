"""The scorer's view of other road users: ground-truth boxes at 2 Hz turned into 10 Hz tracks, as NAVSIM v1.1's
metric cache does (``_interpolate_gt_observation``), quirks included:

- boxes of the current frame and the 10 future frames (t = 0 ... 5 s) in the global frame;
- per track token, x, y, *unwrapped* heading, vx, vy linearly interpolated to 10 Hz (51 steps);
- a track exists only between its first and last sighting;
- a track seen in a single 2 Hz frame is kept, unchanged, at **every** 10 Hz step;
- box sizes are fixed from the first sighting; no radius filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentvla.schema import Scene, local_to_global

AGENT_NAMES = ("vehicle", "pedestrian", "bicycle")  # nuPlan AGENT_TYPES (plus EGO); everything else is static
OBS_DT = 0.1
OBS_STEPS = 51  # 0 ... 5 s


@dataclass
class Tracks:
    """J tracks over T = 51 steps of 0.1 s, global frame."""

    tokens: list[str]
    names: list[str]
    length: np.ndarray  # (J,)
    width: np.ndarray  # (J,)
    valid: np.ndarray  # (J, T) bool
    x: np.ndarray  # (J, T)
    y: np.ndarray
    heading: np.ndarray
    vx: np.ndarray
    vy: np.ndarray

    @property
    def is_agent(self) -> np.ndarray:
        return np.array([n in AGENT_NAMES for n in self.names], dtype=bool)

    def __len__(self) -> int:
        return len(self.tokens)

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> Tracks:
        arr = {k: np.asarray(v, dtype=bool if k == "valid" else np.float64) for k, v in d.items()
               if k not in ("tokens", "names")}
        return cls(tokens=list(d["tokens"]), names=list(d["names"]), **arr)


def interpolate_tracks(sightings: dict[str, list[tuple[float, np.ndarray, str]]], steps: int = OBS_STEPS,
                       dt: float = OBS_DT) -> Tracks:
    """``sightings[token] = [(t, [x, y, heading, vx, vy, length, width], name), ...]`` -> 10 Hz tracks."""
    grid = np.arange(steps) * dt
    tokens = sorted(sightings)
    n = len(tokens)
    out = {k: np.zeros((n, steps)) for k in ("x", "y", "heading", "vx", "vy")}
    valid = np.zeros((n, steps), dtype=bool)
    length, width, names = np.zeros(n), np.zeros(n), []
    for j, tok in enumerate(tokens):
        seen = sorted(sightings[tok], key=lambda s: s[0])
        ts = np.array([s[0] for s in seen])
        vals = np.stack([s[1] for s in seen])
        length[j], width[j] = vals[0, 5], vals[0, 6]
        names.append(seen[0][2])
        if len(seen) == 1:  # official quirk: a single sighting is held at every step
            valid[j] = True
            for k, key in enumerate(("x", "y", "heading", "vx", "vy")):
                out[key][j] = vals[0, k]
            continue
        inside = (grid >= ts[0] - 1e-9) & (grid <= ts[-1] + 1e-9)
        valid[j] = inside
        heading = np.unwrap(vals[:, 2])
        for k, key in enumerate(("x", "y", "heading", "vx", "vy")):
            series = heading if key == "heading" else vals[:, k]
            out[key][j, inside] = np.interp(grid[inside], ts, series)
    return Tracks(tokens, names, length, width, valid, **out)


def scene_tracks(scene: Scene, future_frames: int = 10) -> Tracks:
    """Ground-truth observation of a scene for t = 0 ... future_frames * 0.5 s."""
    sightings: dict[str, list] = {}
    cur = scene.current_index
    for k in range(future_frames + 1):
        frame = scene.frames[cur + k]
        ann = frame.annotations
        if not len(ann):
            continue
        ego = frame.ego_status.ego_pose
        poses = local_to_global(ann.boxes[:, [0, 1, 6]], ego)
        c, s = np.cos(ego[2]), np.sin(ego[2])
        vx = c * ann.velocity_3d[:, 0] - s * ann.velocity_3d[:, 1]
        vy = s * ann.velocity_3d[:, 0] + c * ann.velocity_3d[:, 1]
        for i, tok in enumerate(ann.track_tokens):
            vals = np.array([poses[i, 0], poses[i, 1], poses[i, 2], vx[i], vy[i], ann.boxes[i, 3], ann.boxes[i, 4]])
            sightings.setdefault(tok, []).append((k * 0.5, vals, ann.names[i]))
    return interpolate_tracks(sightings, steps=future_frames * 5 + 1)
