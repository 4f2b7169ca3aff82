"""Training windows for the latent action model: pairs of frames (t, t + Δ) of the same log, on the 2 Hz grid.

The LAM never sees labels: a sample is the frozen features of two frames plus, for the stage-1 (environment) IDM
only, the ego's own motion over the window (its end pose in the start frame and its status), which is what lets
stage 1 explain everything the ego did *not* cause. Windows are taken from whole logs of one split, so train and
test never share footage; a scene's latent sentence is its ``windows`` consecutive windows from the current frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latentvla.data.store import SceneStore
from latentvla.schema import global_to_local

EGO_MOTION_DIM = 9


def ego_motion(frames: list[dict], start: int, end: int) -> np.ndarray:
    """(9,) end pose relative to the start pose (x, y, heading), start status (vx, vy, ax, ay), end speed (vx, vy)."""
    a, b = frames[start]["ego"], frames[end]["ego"]
    rel = global_to_local(np.asarray(b["pose"], dtype=np.float64)[None], np.asarray(a["pose"], dtype=np.float64))[0]
    return np.concatenate([rel, a["velocity"], a["acceleration"], b["velocity"]]).astype(np.float32)


@dataclass
class WindowSet:
    """All windows of some logs: indices into per-log feature arrays plus the ego motion of each window."""

    logs: list[str]
    log_index: np.ndarray  # (N,) index into ``logs``
    start: np.ndarray  # (N,) frame index of t
    end: np.ndarray  # (N,) frame index of t + Δ
    motion: np.ndarray  # (N, 9)

    def __len__(self) -> int:
        return len(self.start)


def split_logs(store: SceneStore, split: str) -> list[str]:
    """Logs whose scenes belong to ``split`` (splits are assigned by log), in manifest order."""
    return list(store.tokens_by_log(split))


def build_windows(store: SceneStore, logs: list[str], window_frames: int) -> WindowSet:
    li, st, en, mo = [], [], [], []
    for k, log in enumerate(logs):
        frames = store._log(log)["frames"]
        for f in range(len(frames) - window_frames):
            li.append(k), st.append(f), en.append(f + window_frames)
            mo.append(ego_motion(frames, f, f + window_frames))
    if not st:
        raise ValueError(f"no {window_frames}-frame windows in logs {logs[:3]}...: the logs are too short")
    return WindowSet(logs, np.array(li), np.array(st), np.array(en), np.stack(mo))


def scene_windows(store: SceneStore, token: str, window_frames: int, windows: int) -> tuple[str, list[int], np.ndarray]:
    """(log, [start frame of each window], (windows, 9) ego motions) of a scene's latent sentence."""
    info = store.info(token)
    log = store._log(info["log"])
    cur = log["_frame_of"][token]
    starts = [cur + k * window_frames for k in range(windows)]
    if starts[-1] + window_frames >= len(log["frames"]):
        raise ValueError(f"scene {token}: its log ends before {windows} windows of {window_frames} frames")
    return info["log"], starts, np.stack([ego_motion(log["frames"], s, s + window_frames) for s in starts])
