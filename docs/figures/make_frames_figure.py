"""Draws docs/figures/frames.png: the ego frame, camera rig and box conventions of the data model.

    python docs/figures/make_frames_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Polygon, Wedge  # noqa: E402

from latentvla.schema import EGO  # noqa: E402
from latentvla.world.geometry import box_corners  # noqa: E402
from latentvla.world.sensors import CAMERA_MOUNTS, SensorConfig  # noqa: E402


def main() -> None:
    cfg = SensorConfig()
    fig, ax = plt.subplots(figsize=(7, 7))
    # Plot with ego x pointing up and y pointing left (as seen from above).
    def xy(p):
        p = np.asarray(p, float)
        return np.stack([-p[..., 1], p[..., 0]], axis=-1)

    for name, (yaw, pos) in CAMERA_MOUNTS.items():
        fov = cfg.front_fov_deg if name == "cam_f0" else cfg.side_fov_deg
        used = name in cfg.cameras
        c = xy(pos[:2])
        theta = 90 + yaw  # matplotlib angle of the ego-frame yaw in the rotated plot
        ax.add_patch(Wedge(c, 7.5 if used else 5, theta - fov / 2, theta + fov / 2, alpha=0.18 if used else 0.07,
                           color="tab:blue" if used else "grey"))
        tip = c + (8.3 if used else 5.6) * np.array([np.cos(np.deg2rad(theta)), np.sin(np.deg2rad(theta))])
        ax.text(*tip, name, ha="center", va="center", fontsize=8, color="tab:blue" if used else "grey")
    ego = box_corners(EGO.rear_axle_to_center, 0.0, 0.0, EGO.length, EGO.width)
    ax.add_patch(Polygon(xy(ego), closed=True, fc="white", ec="black", lw=1.5))
    ax.annotate("", xy(np.array([3.0, 0])), xy(np.zeros(2)), arrowprops=dict(arrowstyle="->", color="red", lw=2))
    ax.annotate("", xy(np.array([0, 3.0])), xy(np.zeros(2)), arrowprops=dict(arrowstyle="->", color="green", lw=2))
    ax.text(*xy([3.3, 0.2]), "x (forward)", color="red", fontsize=9)
    ax.text(*xy([0.3, 3.2]), "y (left)", color="green", fontsize=9)
    ax.plot(*xy(np.zeros(2)), "ko")
    ax.text(*xy([-0.6, -0.3]), "origin: rear axle\nz up, LiDAR frame = ego frame", fontsize=8, va="top")
    ax.plot(*xy(np.array([EGO.rear_axle_to_center, 0])), "kx")
    ax.text(*xy([EGO.rear_axle_to_center + 0.2, -0.2]), "box centre (+1.461 m)", fontsize=8)
    # An annotated box: (x, y, z, l, w, h, heading) in the ego frame, heading CCW from x.
    b = (10.0, -4.5, 0.8, 4.6, 1.9, 1.6, np.deg2rad(20))
    ax.add_patch(Polygon(xy(box_corners(b[0], b[1], b[6], b[3], b[4])), closed=True, fc="tab:orange", alpha=0.6))
    ax.annotate("", xy(np.array([b[0] + 3 * np.cos(b[6]), b[1] + 3 * np.sin(b[6])])), xy(np.array(b[:2])),
                arrowprops=dict(arrowstyle="->", color="tab:orange", lw=1.5))
    ax.text(*xy([b[0] + 3.5, b[1] + 2.0]), "box (x, y, z, l, w, h, heading)\nheading CCW from ego x", fontsize=8)
    traj = np.array([[2.0 * k, 0.03 * (2.0 * k) ** 2] for k in range(1, 9)])
    ax.plot(*xy(traj).T, "o-", color="purple", ms=3)
    ax.text(*xy(traj[-1] + [0.5, -2.5]), "Trajectory: 8 poses (x, y, heading)\nat 0.5 s, current ego frame",
            fontsize=8, color="purple")
    ax.set_xlim(-11, 11)
    ax.set_ylim(-9, 18)
    ax.set_aspect("equal")
    ax.set_title("LatentVLA data model: ego frame, camera rig, boxes, trajectories")
    ax.set_xlabel("-y (m)")
    ax.set_ylabel("x (m)")
    out = Path(__file__).with_name("frames.png")
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(out)


if __name__ == "__main__":
    main()
