"""The pretraining stand-in: perception facts (hand-checked), their texts, and `vla pretrain` -> `vla train --init`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from latentvla.cli import app
from latentvla.map_api import Lane
from latentvla.schema import Annotations, TrafficLightStatus
from latentvla.vla.facts import QUESTIONS, TASKS, caption, perception_facts, task_text
from latentvla.vla.processor import VLAProcessor, add_vla_tokens, build_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_scene(boxes, names, brakes=None, lights=(), lanes=None, pose=(100.0, 50.0, np.pi / 2)):
    """Just what perception_facts reads: the current frame (ego pose, boxes in the ego frame, lights) and lanes."""
    b = np.zeros((len(boxes), 7))
    if boxes:
        b[:, :2] = np.asarray(boxes, dtype=float)
    ann = Annotations(b, list(names), np.zeros((len(names), 3)), [str(i) for i in range(len(names))],
                      None if brakes is None else np.asarray(brakes, bool))
    frame = SimpleNamespace(annotations=ann, traffic_lights=list(lights),
                            ego_status=SimpleNamespace(ego_pose=np.asarray(pose)))
    return SimpleNamespace(current_frame=frame, map_api=SimpleNamespace(lanes=lanes or {}))


def lane(lane_id, pts):
    pts = np.asarray(pts, dtype=float)
    return Lane(lane_id, pts, pts, pts, "rb")


def test_facts_of_a_hand_made_frame():
    # ego at (100, 50) heading north (+y global): "ahead" is global +y, "left" global -x
    scene = fake_scene(
        boxes=[(22.0, 0.3), (12.0, 0.5), (30.0, 4.0), (2.0, 3.0), (-3.0, -3.5), (15.0, 2.5), (25.0, -0.4),
               (70.0, 0.0)],
        names=["vehicle", "vehicle", "vehicle", "vehicle", "vehicle", "pedestrian", "traffic_cone", "vehicle"],
        brakes=[False, True, False, False, False, False, False, False],
        lights=[TrafficLightStatus("mine", "red"), TrafficLightStatus("cross", "green"),
                TrafficLightStatus("behind", "green")],
        lanes={"mine": lane("mine", [(100.0, 80.0), (100.0, 90.0)]),  # starts 30 m ahead, same heading
               "cross": lane("cross", [(90.0, 75.0), (110.0, 75.0)]),  # 25 m ahead but crossing
               "behind": lane("behind", [(100.0, 40.0), (100.0, 45.0)])})
    facts = perception_facts(scene)
    assert facts == {"vehicles_ahead": "4", "lead_distance": "10 m", "lead_braking": "yes", "light": "red",
                     "pedestrian": "yes", "blocked": "yes", "vehicle_left": "yes", "vehicle_right": "yes"}
    assert set(facts) == set(QUESTIONS)


def test_facts_of_an_empty_road():
    facts = perception_facts(fake_scene([], []))
    assert facts == {"vehicles_ahead": "0", "lead_distance": "none", "lead_braking": "none", "light": "none",
                     "pedestrian": "no", "blocked": "no", "vehicle_left": "no", "vehicle_right": "no"}
    # far away (beyond the lead range) or behind: still no lead vehicle
    assert perception_facts(fake_scene([(75.0, 0.0), (-10.0, 0.0)], ["vehicle"] * 2))["lead_distance"] == "none"


def test_every_task_text_is_in_the_tokenizer_vocabulary(tiny_store):
    proc = VLAProcessor(build_tokenizer(), add_vla_tokens(tok := build_tokenizer(), 8), 2)
    proc.tokenizer = tok
    for token in tiny_store.tokens()[:20]:
        facts = perception_facts(tiny_store.load_scene(token, sensors="none", with_sim_state=False))
        for task in TASKS:
            prompt, answer = task_text(task, facts)
            proc.text_ids(prompt), proc.text_ids(answer)  # raises on an out-of-vocabulary word
    assert caption(facts).startswith("vehicles ahead : ")
    with pytest.raises(ValueError, match="unknown pretraining task"):
        task_text("what will the expert do", facts)


def test_text_batch_labels_only_the_answer():
    tok = build_tokenizer()
    proc = VLAProcessor(tok, add_vla_tokens(tok, 8), 2)
    batch = proc.text_batch(["is my lane blocked ?", "describe the scene ."], ["no", "light : red ."])
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape
    assert tok.convert_ids_to_tokens(labels[0][labels[0] != -100].tolist()) == ["no", tok.eos_token]
    assert tok.convert_ids_to_tokens(labels[1][labels[1] != -100].tolist()) == ["light", ":", "red", ".",
                                                                                tok.eos_token]


@pytest.fixture(scope="module")
def pretrain_run(tiny_world, runner, tmp_path_factory, planner_cache_root):
    run = tmp_path_factory.mktemp("pretrain") / "run"
    res = runner.invoke(app, ["vla", "pretrain", "--data", str(tiny_world), "--out", str(run), "--profile", "quick",
                              "--workers", "1", "--quiet", "--cache-dir", str(planner_cache_root)])
    assert res.exit_code == 0, res.output
    return run


def test_pretrain_run_and_init(pretrain_run, tiny_world, lam_run, runner, planner_cache_root, tmp_path):
    metrics = json.loads((pretrain_run / "metrics.json").read_text())
    assert set(metrics["val_exact_by_task"]) <= set(TASKS) and metrics["steps"] > 0
    assert json.loads((pretrain_run / "run.json").read_text())["stage"] == "vla-pretrain"
    out = tmp_path / "teacher"
    res = runner.invoke(app, ["vla", "train", "--data", str(tiny_world), "--labels", str(lam_run[0]), "--out",
                              str(out), "--init", str(pretrain_run), "--profile", "quick", "--workers", "1", "--quiet",
                              "--cache-dir", str(planner_cache_root), "--lam-cache-dir", str(lam_run[1])])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text())
    assert info["init"] == str(pretrain_run)
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (pretrain_run / "tokenizer" / "tokenizer.json"
                                                                   ).read_text()
