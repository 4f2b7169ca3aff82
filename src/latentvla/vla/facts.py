"""Perception facts of a scene's current frame, as text: the pretraining stand-in's captions and VQA pairs.

Real VLMs arrive knowing what a braking car or a red light looks like from generic image-text pretraining. The
CPU teacher gets that knowledge the same way: captions and question/answer pairs written automatically from what
is **visible now** (which objects are where, light colours, brake lights, who is near the path, whether the lane
is blocked), never from what the expert does next or any future frame. Geometry is in the current ego frame
(x forward, y left, metres); every threshold is a named constant below.
"""

from __future__ import annotations

import numpy as np

from latentvla.schema import Scene, global_to_local

AHEAD_M = 40.0  # "vehicles ahead": 0 < x < AHEAD_M
LEAD_AHEAD_M = 60.0  # the lead vehicle: the nearest vehicle in the ego lane's corridor up to this far
LANE_HALF_WIDTH_M = 1.8  # the ego lane's corridor, |y| below this
NEAR_PATH_HALF_WIDTH_M = 6.0  # "near my path": |y| below this
PEDESTRIAN_AHEAD_M = 30.0
BESIDE_X_M = (-6.0, 8.0)  # "beside me": x within this range and 2 < |y| < NEAR_PATH_HALF_WIDTH_M
LIGHT_AHEAD_M = 45.0  # a light counts when its connector starts this close ahead, aligned with the ego heading
LIGHT_MAX_HEADING_RAD = 0.6
MAX_COUNT = 5  # counts are capped ("5" means five or more)
STATIC_NAMES = ("traffic_cone", "barrier", "czone_sign", "generic_object")
VRU_NAMES = ("pedestrian", "bicycle")

# fact key -> question (answers: digits, "yes" / "no", "none", light colours, "<d> m")
QUESTIONS: dict[str, str] = {
    "vehicles_ahead": "how many vehicles are ahead ?",
    "lead_distance": "how far is the lead vehicle ?",
    "lead_braking": "is the lead vehicle braking ?",
    "light": "what colour is the light ahead ?",
    "pedestrian": "is a pedestrian near my path ?",
    "blocked": "is my lane blocked ?",
    "vehicle_left": "is a vehicle beside me on the left ?",
    "vehicle_right": "is a vehicle beside me on the right ?",
}
CAPTION_PROMPT = "describe the scene ."
CAPTION_LABELS = {"vehicles_ahead": "vehicles ahead", "lead_distance": "lead vehicle", "lead_braking": "braking",
                  "light": "light", "pedestrian": "pedestrian", "blocked": "lane blocked", "vehicle_left": "left",
                  "vehicle_right": "right"}
TASKS: tuple[str, ...] = ("caption", *QUESTIONS)
FACT_WORDS: tuple[str, ...] = tuple(sorted({w for t in (*QUESTIONS.values(), CAPTION_PROMPT, *CAPTION_LABELS.values())
                                            for w in t.split()} | {"yes", "no", "none", "red", "yellow", "green"}))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def light_ahead(scene: Scene) -> str:
    """State of the nearest light whose connector starts ahead of the ego and points along its heading."""
    frame = scene.current_frame
    pose = frame.ego_status.ego_pose
    best, state = np.inf, "none"
    for light in frame.traffic_lights:
        lane = scene.map_api.lanes.get(light.lane_id)
        if lane is None or len(lane.centerline) < 2:
            continue
        pts = np.column_stack([lane.centerline[:2], np.zeros(2)])
        a, b = global_to_local(pts, pose)[:, :2]
        heading = np.arctan2(b[1] - a[1], b[0] - a[0])
        if 0.0 < a[0] < LIGHT_AHEAD_M and abs(a[1]) < NEAR_PATH_HALF_WIDTH_M and abs(heading) < LIGHT_MAX_HEADING_RAD \
                and abs(a[1]) < LANE_HALF_WIDTH_M + 1.0 and a[0] < best:
            best, state = a[0], light.state
    return state if state in ("red", "yellow", "green") else "none"


def perception_facts(scene: Scene) -> dict[str, str]:
    """The answer to every question in ``QUESTIONS`` for the scene's current frame."""
    ann = scene.current_frame.annotations
    names = np.asarray(ann.names)
    xy = np.asarray(ann.boxes, dtype=np.float64).reshape(-1, 7)[:, :2]
    brakes = np.zeros(len(names), bool) if ann.brake_lights is None else np.asarray(ann.brake_lights, bool)
    x, y = xy[:, 0], xy[:, 1]
    vehicle = names == "vehicle"
    ahead = (x > 0) & (x < AHEAD_M)
    in_lane = ahead & (np.abs(y) < LANE_HALF_WIDTH_M)
    near = np.abs(y) < NEAR_PATH_HALF_WIDTH_M
    lead = np.flatnonzero(vehicle & (x > 0) & (x < LEAD_AHEAD_M) & (np.abs(y) < LANE_HALF_WIDTH_M))
    lead = lead[np.argmin(x[lead])] if len(lead) else None
    beside = (x > BESIDE_X_M[0]) & (x < BESIDE_X_M[1]) & vehicle
    return {
        "vehicles_ahead": str(min(int((vehicle & ahead & near).sum()), MAX_COUNT)),
        "lead_distance": "none" if lead is None else f"{int(5 * round(x[lead] / 5))} m",
        "lead_braking": "none" if lead is None else _yes(bool(brakes[lead])),
        "light": light_ahead(scene),
        "pedestrian": _yes(bool((np.isin(names, VRU_NAMES) & (x > 0) & (x < PEDESTRIAN_AHEAD_M) & near).any())),
        "blocked": _yes(bool((np.isin(names, STATIC_NAMES) & in_lane).any())),
        "vehicle_left": _yes(bool((beside & (y > 2.0) & near).any())),
        "vehicle_right": _yes(bool((beside & (y < -2.0) & near).any())),
    }


def caption(facts: dict[str, str]) -> str:
    return " ".join(f"{CAPTION_LABELS[k]} : {facts[k]} ." for k in QUESTIONS)


def task_text(task: str, facts: dict[str, str]) -> tuple[str, str]:
    """(prompt, answer) of one pretraining task: ``caption`` or a key of ``QUESTIONS``."""
    if task == "caption":
        return CAPTION_PROMPT, caption(facts)
    if task not in QUESTIONS:
        raise ValueError(f"unknown pretraining task '{task}'; valid: {list(TASKS)}")
    return QUESTIONS[task], facts[task]
