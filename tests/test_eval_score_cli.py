"""`latentvla score` end to end on the tiny world: CSV/summary contracts, agents, bad input, workers, scoring cases,
--explain and the sanity gate. The metric cache is built once per session into a temporary directory."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from latentvla.cli import app

PDMS_HEADER = "token,family,valid,nc,dac,ttc,ep,c,pdms"
EPDMS_HEADER = "token,family,valid,nc,dac,ddc,tlc,ep,ttc,lk,hc,ec,epdms"


def _score(runner, tiny_world, cache_dir, out, *extra, agent="log-replay", workers=1):
    args = ["score", "--data", str(tiny_world), "--agent", agent, "--out", str(out), "--workers", str(workers),
            "--cache-dir", str(cache_dir), "--quiet", *extra]
    return runner.invoke(app, args)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def log_replay_run(runner, tiny_world, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("score") / "human.csv"
    res = _score(runner, tiny_world, cache_dir, out)
    assert res.exit_code == 0, res.output
    return out


def test_csv_and_summary_contract(log_replay_run, tiny_store):
    text = log_replay_run.read_text()
    assert text.startswith(PDMS_HEADER + ",")
    rows = _rows(log_replay_run)
    assert [r["token"] for r in rows] == tiny_store.tokens("test")
    summary = json.loads(log_replay_run.with_name("human.summary.json").read_text())
    assert summary["metric"] == "pdms-v1.1" and summary["split"] == "test"
    assert summary["scenes"] == len(rows) and summary["invalid"] == 0
    pdms = np.array([float(r["pdms"]) for r in rows])
    assert np.all((pdms >= 0) & (pdms <= 1))
    assert summary["mean"]["pdms"] == pytest.approx(pdms.mean(), abs=1e-6)  # mean of per-scene scores
    for r in rows:  # per-scene aggregation
        nc, dac, ttc, ep, c = (float(r[k]) for k in ("nc", "dac", "ttc", "ep", "c"))
        assert float(r["pdms"]) == pytest.approx(nc * dac * (5 * ttc + 5 * ep + 2 * c) / 12, abs=1e-6)
    assert sum(f["scenes"] for f in summary["by_family"].values()) == len(rows)
    assert summary["pdms_with_invalid_as_zero"] == pytest.approx(summary["mean"]["pdms"])
    assert summary["mean"]["pdms"] >= 0.85  # the expert drives well


def test_workers_do_not_change_results(runner, tiny_world, cache_dir, tmp_path):
    a, b = tmp_path / "w1.csv", tmp_path / "w2.csv"
    assert _score(runner, tiny_world, cache_dir, a, agent="constant-velocity", workers=1).exit_code == 0
    assert _score(runner, tiny_world, cache_dir, b, agent="constant-velocity", workers=2).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_predictions_file_reproduces_log_replay_and_marks_bad_rows(runner, tiny_world, cache_dir, tmp_path,
                                                                   tiny_store, log_replay_run):
    tokens = tiny_store.tokens("test")
    preds = {t: tiny_store.load_scene(t, with_sim_state=False).get_future_trajectory().poses.tolist()
             for t in tokens}
    good = tmp_path / "preds.json"
    good.write_text(json.dumps(preds))
    out = tmp_path / "p.csv"
    res = _score(runner, tiny_world, cache_dir, out, agent=f"predictions:{good}")
    assert res.exit_code == 0, res.output
    human = {r["token"]: float(r["pdms"]) for r in _rows(log_replay_run)}
    for r in _rows(out):  # float32 poses of the same trajectory: same scores up to rounding
        assert float(r["pdms"]) == pytest.approx(human[r["token"]], abs=2e-3)

    bad = dict(preds)
    bad[tokens[0]] = [[float("nan"), 0.0, 0.0]] * 8
    bad[tokens[1]] = preds[tokens[1]][:5]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    out2 = tmp_path / "bad.csv"
    res = _score(runner, tiny_world, cache_dir, out2, agent=f"predictions:{path}")
    assert res.exit_code == 0, res.output
    rows = {r["token"]: r for r in _rows(out2)}
    assert rows[tokens[0]]["valid"] == "false" and "NaN" in rows[tokens[0]]["error"]
    assert rows[tokens[1]]["valid"] == "false" and "poses" in rows[tokens[1]]["error"]
    assert rows[tokens[0]]["pdms"] == ""
    summary = json.loads(out2.with_name("bad.summary.json").read_text())
    assert summary["invalid"] == 2
    valid = [float(r["pdms"]) for r in rows.values() if r["valid"] == "true"]
    assert summary["mean"]["pdms"] == pytest.approx(np.mean(valid), abs=1e-6)
    assert summary["pdms_with_invalid_as_zero"] == pytest.approx(sum(valid) / len(rows), abs=1e-6)

    del bad[tokens[2]]
    path.write_text(json.dumps(bad))
    res = _score(runner, tiny_world, cache_dir, tmp_path / "x.csv", agent=f"predictions:{path}")
    assert res.exit_code == 2 and tokens[2] in res.output


def test_unknown_agent_lists_valid_ones(runner, tiny_world, cache_dir, tmp_path):
    res = _score(runner, tiny_world, cache_dir, tmp_path / "x.csv", agent="teleport")
    assert res.exit_code == 2
    assert "constant-velocity" in res.output and "log-replay" in res.output and "pdm-closed" in res.output


def test_reference_agent_and_constant_velocity(runner, tiny_world, cache_dir, tmp_path, log_replay_run):
    out = tmp_path / "pdm.csv"
    assert _score(runner, tiny_world, cache_dir, out, agent="pdm-closed").exit_code == 0
    pdm = json.loads(out.with_name("pdm.summary.json").read_text())["mean"]["pdms"]
    human = json.loads(log_replay_run.with_name("human.summary.json").read_text())["mean"]["pdms"]
    cv_out = tmp_path / "cv.csv"
    assert _score(runner, tiny_world, cache_dir, cv_out, agent="constant-velocity").exit_code == 0
    cv = json.loads(cv_out.with_name("cv.summary.json").read_text())["mean"]["pdms"]
    assert pdm >= 0.8
    assert cv < human


def test_scoring_case_round_trip_and_explain(runner, tiny_world, cache_dir, tmp_path, log_replay_run, capsys):
    rows = _rows(log_replay_run)
    token = rows[0]["token"]
    case = tmp_path / "case.json"
    res = runner.invoke(app, ["score", "--dump-case", token, "--data", str(tiny_world), "--agent", "log-replay",
                              "--out", str(case), "--cache-dir", str(cache_dir), "--workers", "1"])
    assert res.exit_code == 0, res.output
    saved = json.loads(case.read_text())
    assert saved["format"] == "latentvla-scoring-case/1" and saved["scene"]["token"] == token
    res = runner.invoke(app, ["score", "--case", str(case)])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("nc", "dac", "ttc", "ep", "c", "pdms"):
        assert scores[key] == pytest.approx(float(rows[0][key]), abs=1e-6)
    res = runner.invoke(app, ["score", "--case", str(case), "--explain"])
    assert res.exit_code == 0, res.output
    explained = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"nc", "dac", "ttc", "c", "ep"} <= set(explained["explain"])
    res = runner.invoke(app, ["score", "--explain", token, "--data", str(tiny_world), "--agent", "constant-velocity",
                              "--cache-dir", str(cache_dir), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "NC:" in res.stdout and "DAC:" in res.stdout and "EP:" in res.stdout

    saved["scene"]["reference_poses"] = None  # a hand-made case without a reference: planned from the case itself
    saved["scene"]["speed_limit"] = None
    no_ref = tmp_path / "no_ref.json"
    no_ref.write_text(json.dumps(saved))
    res = runner.invoke(app, ["score", "--case", str(no_ref)])
    assert res.exit_code == 0, res.output
    assert 0.0 <= json.loads(res.stdout.strip().splitlines()[-1])["pdms"] <= 1.0

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "latentvla-scoring-case/1", "metric": "pdms", "scene": {},
                                  "proposal": {"poses": [[0, 0, 0]], "interval": 0.5}}))
    res = runner.invoke(app, ["score", "--case", str(broken)])
    assert res.exit_code == 2 and "lacks the key" in res.output


def test_sanity_gate(runner, tiny_world, cache_dir, monkeypatch):
    from latentvla.eval import score_cli

    args = ["score", "--sanity", "--data", str(tiny_world), "--cache-dir", str(cache_dir), "--workers", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "sanity gate passed" in res.stdout
    monkeypatch.setitem(score_cli.SANITY_RANGES, "log-replay", (0.999, 1.0))  # an impossible expectation fails
    monkeypatch.setitem(score_cli.SANITY_RANGES, "constant-velocity", (0.0, 0.01))
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "SANITY GATE FAILED" in res.stdout


def test_epdms_csv_summary_and_case(runner, tiny_world, cache_dir, tmp_path):
    out = tmp_path / "e.csv"
    res = _score(runner, tiny_world, cache_dir, out, "--metric", "epdms")
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith(EPDMS_HEADER + ",")
    rows = _rows(out)
    summary = json.loads(out.with_name("e.summary.json").read_text())
    assert summary["metric"] == "epdms-v2" and summary["invalid"] == 0
    assert summary["mean"]["epdms"] == pytest.approx(np.mean([float(r["epdms"]) for r in rows]), abs=1e-6)
    with_ec = [r for r in rows if r["ec"] != ""]
    assert 0 < len(with_ec) < len(rows)  # the first scene of each log has no predecessor: EC is NaN there
    for r in rows:
        mult = np.prod([float(r[k]) for k in ("nc", "dac", "ddc", "tlc")])
        terms = {"ep": 5, "ttc": 5, "lk": 2, "hc": 2, "ec": 2}
        used = {k: w for k, w in terms.items() if r[k] != ""}
        expected = mult * sum(w * float(r[k]) for k, w in used.items()) / sum(used.values())
        assert float(r["epdms"]) == pytest.approx(expected, abs=1e-6)
    token = with_ec[0]["token"]
    case = tmp_path / "e_case.json"
    res = runner.invoke(app, ["score", "--dump-case", token, "--data", str(tiny_world), "--agent", "log-replay",
                              "--metric", "epdms", "--out", str(case), "--cache-dir", str(cache_dir), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(case.read_text())["previous"] is not None
    res = runner.invoke(app, ["score", "--case", str(case)])
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("nc", "dac", "ddc", "tlc", "ep", "ttc", "lk", "hc", "ec", "epdms"):
        assert scores[key] == pytest.approx(float(with_ec[0][key]), abs=1e-6), key


def test_minimal_hand_made_case(runner, tmp_path):
    """Only the required keys: a straight two-lane road, no other road users, a constant-speed plan."""
    road = [[[[-50.0, -4.0], [250.0, -4.0], [250.0, 4.0], [-50.0, 4.0], [-50.0, -4.0]]]]
    lane = [[[[-50.0, -2.0], [250.0, -2.0], [250.0, 2.0], [-50.0, 2.0], [-50.0, -2.0]]]]
    init = [0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    case = {"format": "latentvla-scoring-case/1", "metric": "pdms",
            "proposal": {"poses": [[5.0 * k, 0.0, 0.0] for k in range(1, 9)], "interval": 0.5},
            "scene": {"token": "hand", "initial_state": init,
                      "sightings": [{"time_s": 0.0, "tokens": [], "names": [], "boxes": []}],
                      "drivable": {"polygons": [road, lane], "kinds": ["roadblock", "lane"], "ids": ["r", "l"],
                                   "on_route": [0, 1]},
                      "centerline": [[-50.0, 0.0], [250.0, 0.0]]}}
    for metric in ("pdms", "epdms"):
        case["metric"] = metric
        path = tmp_path / f"{metric}.json"
        path.write_text(json.dumps(case))
        res = runner.invoke(app, ["score", "--case", str(path)])
        assert res.exit_code == 0, res.output
        scores = json.loads(res.stdout.strip().splitlines()[-1])
        assert scores["nc"] == scores["dac"] == scores["ttc"] == 1.0
        assert scores[metric] > 0.8
        if metric == "epdms":
            assert scores["ec"] is None and scores["tlc"] == 1.0 and scores["lk"] == 1.0


def test_batched_agents_plan_in_batches_and_fail_per_scene(tiny_world, tiny_store, cache_dir):
    """An agent with compute_trajectories is called once per batch; a scene that breaks the batch is found by the
    per-scene retry and only it becomes invalid, with the same plans elsewhere as the per-scene path."""
    from latentvla.agents.baselines import ConstantVelocityAgent
    from latentvla.eval.runner import score_split

    tokens = tiny_store.tokens("test")[:5]
    bad = tokens[2]

    class Batched(ConstantVelocityAgent):
        calls: list[int] = []

        def compute_trajectory(self, agent_input, scene=None):
            if agent_input.token == bad:
                raise RuntimeError("boom")
            return super().compute_trajectory(agent_input, scene)

        def compute_trajectories(self, agent_inputs):
            self.calls.append(len(agent_inputs))
            return [self.compute_trajectory(a) for a in agent_inputs]

    agent = Batched()
    rows, _ = score_split(tiny_world, agent, split="test", cache_root=cache_dir, quiet=True, tokens=tokens)
    plain, _ = score_split(tiny_world, ConstantVelocityAgent(), split="test", cache_root=cache_dir, quiet=True,
                           tokens=tokens)
    assert agent.calls == [5]
    for r, p in zip(rows, plain):
        assert r["valid"] == (r["token"] != bad)
        if r["valid"]:
            assert r["pdms"] == p["pdms"]
    assert "RuntimeError: boom" in next(r for r in rows if r["token"] == bad)["error"]
