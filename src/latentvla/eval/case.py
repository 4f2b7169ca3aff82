"""Scoring cases: one self-contained JSON file holding everything the scorer needs for one scene and one plan.

This is how a surprising score is reproduced and reported, and how golden tests are stored: the case carries the
scene's ``SceneInputs`` (initial ego state, agents' 2 Hz boxes, drivable and lane polygons, route centerline,
red lights, the human's past and future, the PDM-Closed reference plan), the proposal, and the scores it got when it
was written. The format is specified in docs/EVALUATION.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from latentvla.eval.scene_inputs import SceneInputs
from latentvla.runtime.io import write_json

CASE_FORMAT = "latentvla-scoring-case/1"


class CaseError(ValueError):
    """A scoring case file is missing, malformed or of another format."""


def make_case(inputs: SceneInputs, poses: np.ndarray, interval: float, agent: str, metric: str,
              previous: dict | None = None) -> dict:
    """``previous`` (EPDMS extended comfort): {"initial_state", "t0_us", "poses", "interval"} of the scene 0.5 s
    earlier, or None."""
    case = {"format": CASE_FORMAT, "metric": metric, "agent": agent, "scene": inputs.to_dict(),
            "proposal": {"poses": np.asarray(poses, dtype=np.float64).tolist(), "interval": float(interval)},
            "previous": previous}
    case["expected"] = finite(score_case(case))
    return case


def finite(obj):
    """NaN (EC without a predecessor) -> None, so JSON output stays standard."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def read_case(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CaseError(f"scoring case {path} not found")
    try:
        case = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CaseError(f"scoring case {path} is not valid JSON ({e})") from None
    if not isinstance(case, dict) or case.get("format") != CASE_FORMAT:
        raise CaseError(f"{path} is not a scoring case (expected \"format\": \"{CASE_FORMAT}\")")
    for key in ("metric", "scene", "proposal"):
        if key not in case:
            raise CaseError(f"scoring case {path} lacks the key '{key}'")
    return case


def parse_case(case: dict) -> tuple[SceneInputs, np.ndarray, float]:
    try:
        inputs = SceneInputs.from_dict(case["scene"])
        poses = np.asarray(case["proposal"]["poses"], dtype=np.float64)
        interval = float(case["proposal"]["interval"])
    except KeyError as e:
        raise CaseError(f"scoring case lacks the key {e} (see docs/EVALUATION.md for the format)") from None
    except (TypeError, ValueError) as e:
        raise CaseError(f"scoring case is malformed: {e}") from None
    if poses.ndim != 2 or poses.shape[1] != 3 or not np.all(np.isfinite(poses)):
        raise CaseError(f"scoring case proposal must be finite (N, 3) poses, got shape {poses.shape}")
    if inputs.reference_poses is None:  # a hand-made case: plan the reference from the case's own contents
        from latentvla.eval.reference import pdm_closed_plan

        inputs.reference_poses = pdm_closed_plan(inputs)
    return inputs, poses, interval


def score_case(case: dict, metric: str | None = None) -> dict[str, float]:
    """Sub-scores of the case's proposal, keys as in the per-scene CSV."""
    metric = metric or case["metric"]
    inputs, poses, interval = parse_case(case)
    if metric == "pdms":
        from latentvla.eval.scene_score import score_pdms_batch

        return score_pdms_batch([inputs], [poses], interval)[0]
    if metric == "epdms":
        from latentvla.eval.epdms import score_epdms_case

        return score_epdms_case(inputs, poses, interval, case.get("previous"))
    raise CaseError(f"unknown metric '{metric}' in scoring case; valid: pdms, epdms")


def write_case(case: dict, out: str | Path) -> None:
    write_json(Path(out), case, indent=1)
