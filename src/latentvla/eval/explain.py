"""Why a scene scored what it did: the collisions, the corner that left the drivable area, the comfort bound that
was exceeded, the progress against the reference. Users' most frequent NAVSIM question is "why is this 0?"
(NAVSIM issues #56, #185); ``latentvla score --explain TOKEN`` answers it from the same code path as the score.
"""

from __future__ import annotations

import numpy as np

from latentvla.eval import comfort as cf
from latentvla.eval.pdm_metrics import DRIVABLE_KINDS, PROGRESS_THRESHOLD
from latentvla.eval.scene_inputs import SceneInputs
from latentvla.eval.scene_score import pdms_from_states, reference_plan, simulate_plans
from latentvla.eval.state import DT

CORNERS = ("front-left", "rear-left", "rear-right", "front-right")
AGENT = 1  # row of the agent's proposal ([reference, agent])

_BOUNDS = {  # check -> (signal, (min, max)) as in comfort.comfort_flags
    "lon_accel": (lambda s: cf.acceleration_signal(s, "x", window_length=s.shape[1]), (cf.MIN_LON_ACCEL,
                                                                                         cf.MAX_LON_ACCEL)),
    "lat_accel": (lambda s: cf.acceleration_signal(s, "y", window_length=s.shape[1]),
                  (-cf.MAX_ABS_LAT_ACCEL, cf.MAX_ABS_LAT_ACCEL)),
    "jerk": (lambda s: cf.jerk_signal(s, "magnitude"), (-cf.MAX_ABS_MAG_JERK, cf.MAX_ABS_MAG_JERK)),
    "lon_jerk": (lambda s: cf.jerk_signal(s, "x"), (-cf.MAX_ABS_LON_JERK, cf.MAX_ABS_LON_JERK)),
    "yaw_accel": (lambda s: cf.yaw_signal(s, 2), (-cf.MAX_ABS_YAW_ACCEL, cf.MAX_ABS_YAW_ACCEL)),
    "yaw_rate": (lambda s: cf.yaw_signal(s, 1), (-cf.MAX_ABS_YAW_RATE, cf.MAX_ABS_YAW_RATE)),
}


def comfort_report(states: np.ndarray) -> list[dict]:
    """Per check of one proposal (1, T, 11): pass flag, signal extremes, the bound and the first violation time."""
    out = []
    for name, (signal, (lo, hi)) in _BOUNDS.items():
        v = signal(states)[0]
        bad = np.flatnonzero(~((v > lo) & (v < hi)))
        out.append({"check": name, "pass": not len(bad), "min": float(v.min()), "max": float(v.max()),
                    "bound": [lo, hi], "first_violation_s": round(float(bad[0]) * DT, 1) if len(bad) else None})
    return out


def dac_report(inputs: SceneInputs, points: np.ndarray) -> list[dict]:
    """Steps where a corner of the agent's box is outside every drivable polygon (strictly inside counts)."""
    inside = inputs.drivable.contains(points[..., :4, :])  # (P, T, 4)
    drivable = np.isin(np.array(inputs.drivable.kinds), DRIVABLE_KINDS)
    ok = inside[drivable].any(0) if drivable.any() else np.zeros(points.shape[:-2] + (4,), dtype=bool)
    out = []
    for t in np.flatnonzero(~ok.all(-1)):
        out.append({"t": round(float(t) * DT, 1), "corners": [CORNERS[k] for k in np.flatnonzero(~ok[t])],
                    "xy": points[t, np.flatnonzero(~ok[t])[0]].round(3).tolist()})
    return out


def explain_pdms(inputs: SceneInputs, poses: np.ndarray, interval: float = 0.5) -> dict:
    """Sub-scores of the agent's plan with the reasons behind each."""
    states = simulate_plans([inputs], [[reference_plan(inputs), (poses, interval)]])[0]
    details: dict = {}
    sub = pdms_from_states(inputs, states, explain=details)
    scores = {k: float(v[AGENT]) for k, v in sub.items()}
    raw = details["raw_progress"]
    mult = sub["nc"] * sub["dac"]
    best = float((raw * mult).max())
    return {
        "token": inputs.token,
        "scores": scores,
        "nc": [e for e in details["nc"] if e["proposal"] == AGENT],
        "dac": dac_report(inputs, details["points"][AGENT]),
        "ttc": [e for e in details["ttc"] if e["proposal"] == AGENT],
        "c": comfort_report(states[AGENT:AGENT + 1]),
        "ep": {"agent_progress_m": float(raw[AGENT]), "reference_progress_m": float(raw[0]),
               "agent_multiplier": float(mult[AGENT]), "reference_multiplier": float(mult[0]),
               "best_masked_progress_m": best, "threshold_m": PROGRESS_THRESHOLD,
               "normalised": best > PROGRESS_THRESHOLD},
        "simulated_end_xy": states[AGENT, -1, :2].round(3).tolist(),
    }


def explain_lines(report: dict) -> list[str]:
    """Human-readable lines for the terminal."""
    s = report["scores"]
    lines = [f"scene {report['token']}: " + ", ".join(f"{k}={v:.3f}" for k, v in s.items())]
    if s.get("nc", 1.0) < 1.0 or report["nc"]:
        for e in report["nc"]:
            verdict = "AT FAULT" if e["at_fault"] else "not at fault"
            lines.append(f"  NC: t={e['t']:.1f}s contact with {e['name']} {e['track']} ({e['type']}, {verdict})")
    else:
        lines.append("  NC: no contact with any object")
    if report["dac"]:
        first = report["dac"][0]
        lines.append(f"  DAC: {', '.join(first['corners'])} corner(s) outside the drivable area at t={first['t']:.1f}s "
                     f"(at {first['xy']}); {len(report['dac'])} step(s) in total")
    else:
        lines.append("  DAC: all four corners inside the drivable area at every step")
    if s.get("ttc", 1.0) < 1.0:
        for e in report["ttc"]:
            lines.append(f"  TTC: at t={e['t']:.1f}s the box projected {e['offset_s']:.1f}s ahead meets {e['name']} "
                         f"{e['track']}")
    else:
        lines.append("  TTC: no projected conflict within 0.9 s")
    failed = [c for c in report["c"] if not c["pass"]]
    if failed:
        for c in failed:
            lines.append(f"  C: {c['check']} outside ({c['bound'][0]}, {c['bound'][1]}) from t={c['first_violation_s']}s "
                         f"(min {c['min']:.3f}, max {c['max']:.3f})")
    else:
        lines.append("  C: all six comfort bounds respected")
    ep = report["ep"]
    if ep["normalised"]:
        lines.append(f"  EP: agent progress {ep['agent_progress_m']:.2f} m x multiplier {ep['agent_multiplier']} "
                     f"over best {ep['best_masked_progress_m']:.2f} m (reference {ep['reference_progress_m']:.2f} m)")
    else:
        lines.append(f"  EP: best masked progress {ep['best_masked_progress_m']:.2f} m <= {ep['threshold_m']} m, so EP "
                     f"is 1 if NC*DAC > 0 else 0")
    return lines
