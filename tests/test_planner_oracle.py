"""Privileged fusion contexts (``planner train --oracle``): the encodings by hand, the source rules, and oracle
runs trained through the CLI in-process, scored from the dataset and refused on live inputs."""

from __future__ import annotations

import numpy as np
import pytest

from latentvla.cli import app
from latentvla.planner.oracle import (
    FOURIER_FREQS,
    fact_values,
    facts_onehot,
    fourier,
    noisy_codes,
    oracle_key,
    parse_oracle,
)
from latentvla.planner.sources import Sources

pytestmark = pytest.mark.usefixtures("one_thread")

FACTS = {"vehicles_ahead": "2", "lead_distance": "15 m", "lead_braking": "yes", "light": "red",
         "pedestrian": "no", "blocked": "yes", "vehicle_left": "no", "vehicle_right": "yes"}


def test_facts_onehot_by_hand() -> None:
    x = facts_onehot([FACTS])
    values = fact_values()
    assert x.shape == (1, 8, max(map(len, values.values()))) and x.sum() == 8
    keys = list(values)
    # vehicles_ahead "2" is answer 2 of 0..5; lead_distance "15 m" is answer 4 of none, 0, 5, 10, 15 ...
    assert x[0, keys.index("vehicles_ahead"), 2] == 1 and x[0, keys.index("lead_distance"), 4] == 1
    assert x[0, keys.index("light"), 1] == 1 and x[0, keys.index("pedestrian"), 0] == 1
    with pytest.raises(ValueError, match="light='blue'"):
        facts_onehot([{**FACTS, "light": "blue"}])


def test_fourier_features_keep_scale() -> None:
    """A raw 3-wide pose token would lose its scale to the context's layer norm; sin / cos features do not:
    poses 10 m apart give features far apart, and the values are bounded."""
    traj = np.zeros((2, 8, 3))
    traj[1, :, 0] = 10.0
    f = fourier(traj)
    assert f.shape == (2, 8, 6 * len(FOURIER_FREQS)) and np.abs(f).max() <= 1.0
    assert np.abs(f[0].astype(np.float32) - f[1].astype(np.float32)).max() > 0.5
    per_component = f[0, 0].reshape(3, 2, len(FOURIER_FREQS))  # (x, y, heading) x (sin, cos) x frequency
    np.testing.assert_allclose(per_component[:, 1], 1.0)  # cos(0) = 1
    np.testing.assert_allclose(per_component[:, 0], 0.0)  # sin(0) = 0


def test_oracle_source_rules(tmp_path) -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        Sources(teacher=tmp_path, oracle="facts")
    with pytest.raises(ValueError, match="--latent-labels"):
        Sources(oracle="latent")
    with pytest.raises(ValueError, match="unknown oracle 'future'"):
        Sources(oracle="future")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Sources(oracle="latent@1.5", latent_labels=tmp_path)
    with pytest.raises(ValueError, match="unknown oracle 'facts@0.5'"):
        Sources(oracle="facts@0.5")
    assert parse_oracle("latent@0.25") == ("latent", 0.25) and parse_oracle("expert") == ("expert", None)
    s = Sources(oracle="latent", latent_labels=tmp_path)
    assert s.aux_labels is None and Sources(latent_labels=tmp_path).aux_labels == tmp_path
    assert oracle_key("facts") == "oracle:facts"


def test_noisy_codes_hit_the_asked_accuracy_and_depend_on_the_scene_only() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (4000, 12))
    tokens = [f"scene{i}" for i in range(4000)]
    for acc in (0.33, 0.75):
        noisy = noisy_codes(codes, tokens, 16, acc)
        assert abs((noisy == codes).mean() - acc) < 0.01
        assert noisy.min() >= 0 and noisy.max() < 16
    again = noisy_codes(codes[::-1], tokens[::-1], 16, 0.33)[::-1]  # another order, the same draws per scene
    np.testing.assert_array_equal(again, noisy_codes(codes, tokens, 16, 0.33))


@pytest.fixture(scope="module")
def oracle_runs(tiny_world, cache_dir, runner, tmp_path_factory, planner_cache_root, teacher_run):
    root = tmp_path_factory.mktemp("oracle")
    base = ["planner", "train", "--data", str(tiny_world), "--host", "ipad", "--profile", "quick", "--workers", "1",
            "--quiet", "--cache-dir", str(planner_cache_root), "--metric-cache-dir", str(cache_dir),
            "--set", "train.epochs=1"]
    runs = {}
    for name in ("facts", "latent", "expert"):
        extra = ["--latent-labels", str(teacher_run["lam"])] if name == "latent" else []
        res = runner.invoke(app, [*base, "--out", str(root / name), "--oracle", name, *extra])
        assert res.exit_code == 0, res.output
        runs[name] = root / name
    return runs


def test_oracle_runs_score_from_the_dataset_only(oracle_runs, tiny_world, tiny_store, cache_dir,
                                                 planner_cache_root) -> None:
    from latentvla.agents import load_agent
    from latentvla.eval.runner import score_split
    from latentvla.planner.checkpoint import read_config
    from latentvla.runtime.io import read_json

    shapes = {"facts": (8, max(map(len, fact_values().values()))), "expert": (8, 6 * len(FOURIER_FREQS))}
    for name, run in oracle_runs.items():
        cfg = read_config(run / "model.safetensors")
        assert read_json(run / "run.json")["oracle"] == name and cfg.fusion.teacher_key.startswith(f"oracle:{name}")
        if name in shapes:
            assert (cfg.fusion.context_tokens, cfg.fusion.context_dim) == shapes[name]
        agent = load_agent(str(run))
        assert agent.teacher is None
        with pytest.raises(ValueError, match="privileged"):
            agent.plan([tiny_store.load_agent_input(tiny_store.tokens("test")[0])])
        agent.use_cache(tiny_world, "test", cache_root=planner_cache_root)
        rows, summary = score_split(tiny_world, agent, "test", cache_root=cache_dir, quiet=True)
        assert summary["invalid"] == 0 and len(rows) == len(tiny_store.tokens("test")), name


def test_oracle_context_changes_the_plan(oracle_runs, tiny_world, tiny_store, planner_cache_root) -> None:
    """The fused context reaches the output: another scene's facts give another plan for the same scene."""
    import torch

    from latentvla.agents import load_agent
    from latentvla.planner.fusion import TEACHER_KEY

    agent = load_agent(str(oracle_runs["expert"]))
    agent.use_cache(tiny_world, "test", cache_root=planner_cache_root)
    tokens = tiny_store.tokens("test")[:2]
    inputs = [tiny_store.load_agent_input(t, sensors=False) for t in tokens]
    feats = agent.features(inputs[:1])
    with torch.no_grad():
        a = agent.model(feats)["proposals"]
        swapped = {**feats, TEACHER_KEY: agent.features(inputs[1:])[TEACHER_KEY]}
        b = agent.model(swapped)["proposals"]
    assert not torch.allclose(a, b)
