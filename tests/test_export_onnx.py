"""`latentvla export onnx`: tiny untrained planners (quick preset) exported through the CLI, then the .onnx run on
onnxruntime against PyTorch at a batch size other than the traced one (the batch axis is dynamic)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="needs the [export] extra")

from latentvla.cli import app  # noqa: E402
from latentvla.config import resolve  # noqa: E402
from latentvla.export.onnx import input_keys, onnx_session, random_features  # noqa: E402
from latentvla.planner.checkpoint import load_planner, save_planner  # noqa: E402
from latentvla.planner.configuration import PlannerConfig  # noqa: E402
from latentvla.planner.features import feature_keys  # noqa: E402
from latentvla.planner.modeling import build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED_OUTPUTS = {"ipad": ["trajectory", "proposals", "selection_score"], "transfuser": ["trajectory"],
                    "ego-mlp": ["trajectory"]}
# the distilled student (latent head + feature alignment: training-only heads) and a fused "full" model (reads
# the teacher's embeddings; gates open so they matter)
STUDENT = ["distill.latent_target=teacher", "distill.latent_positions=3", "distill.latent_codes=5",
           "distill.full_key=abc"]
FULL = ["fusion.enabled=true", "fusion.context_tokens=7", "fusion.context_dim=24", "fusion.gate_init=0.5"]
VARIANTS = {"ipad": ("ipad", []), "transfuser": ("transfuser", []), "ego-mlp": ("ego-mlp", []),
            "ipad-student": ("ipad", STUDENT), "transfuser-full": ("transfuser", FULL)}


def tiny_run(tmp_path, host: str, overrides: list[str] | None = None, name: str | None = None):
    """A planner run directory holding only model.safetensors (all that load_planner reads)."""
    cfg = resolve(PlannerConfig, "planner", "quick", None, [f"host={host}", *(overrides or [])])
    torch.manual_seed(0)
    run = tmp_path / (name or host)
    save_planner(build_model(cfg), cfg, run / "model.safetensors")
    return run, cfg


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_matches_torch(runner, tmp_path, variant):
    host, overrides = VARIANTS[variant]
    run, cfg = tiny_run(tmp_path, host, overrides, variant)
    out = tmp_path / "exports" / f"{variant}.onnx"
    r = runner.invoke(app, ["export", "onnx", "--run", str(run), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["outputs"] == EXPECTED_OUTPUTS[host] and summary["opset"] == 17
    keys = ["ego_status"] if host == "ego-mlp" else list(feature_keys(cfg.features))
    assert summary["inputs"] == keys + (["teacher_embeddings"] if cfg.fusion.enabled else [])
    assert summary["max_abs_diff"] <= 1e-4 and summary["bytes"] == out.stat().st_size
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # nothing else written beside it

    # a fresh random batch of 3 (the export traced batch 1 and verified batch 2)
    feats = random_features(cfg, 3, seed=42)
    assert list(feats) == list(input_keys(cfg))
    model, _ = load_planner(run / "model.safetensors")
    with torch.no_grad():
        want = model({k: torch.from_numpy(v) for k, v in feats.items()})
    got = onnx_session(out, threads=1)(feats)
    assert got["trajectory"].shape == (3, 8, 3)
    np.testing.assert_allclose(got["trajectory"], want["trajectory"].numpy(), atol=1e-4, rtol=0)
    if host == "ipad":
        np.testing.assert_allclose(got["proposals"], want["proposals"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["selection_score"], want["selection_score"].numpy(), atol=1e-4, rtol=0)
    if cfg.fusion.enabled:  # the teacher input is live in the graph, not folded away
        other = onnx_session(out, threads=1)({**feats, "teacher_embeddings": -feats["teacher_embeddings"]})
        assert np.abs(other["trajectory"] - got["trajectory"]).max() > 1e-3


def test_human_summary(runner, tmp_path):
    run, _ = tiny_run(tmp_path, "ego-mlp")
    r = runner.invoke(app, ["export", "onnx", "--run", str(run), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "ego-mlp" in r.output and "trajectory" in r.output


def test_bad_suffix(runner, tmp_path):
    run, _ = tiny_run(tmp_path, "ego-mlp")
    r = runner.invoke(app, ["export", "onnx", "--run", str(run), "--out", str(tmp_path / "model.pt")])
    assert r.exit_code == 2 and ".onnx" in r.output
    assert not (tmp_path / "model.pt").exists()


def test_missing_run(runner, tmp_path):
    missing = tmp_path / "no_such_run"
    r = runner.invoke(app, ["export", "onnx", "--run", str(missing), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "no_such_run" in r.output
    empty = tmp_path / "unfinished"
    empty.mkdir()
    r = runner.invoke(app, ["export", "onnx", "--run", str(empty), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "unfinished" in r.output and "model.safetensors" in r.output
    assert not (tmp_path / "m.onnx").exists()


def test_not_a_planner_run(runner, tmp_path):
    from safetensors.torch import save_file

    run = tmp_path / "lam_run"
    run.mkdir()
    save_file({"w": torch.zeros(2)}, str(run / "model.safetensors"), metadata={"format": "latentvla.lam/1"})
    r = runner.invoke(app, ["export", "onnx", "--run", str(run), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "lam_run" in r.output and "latentvla.planner/1" in r.output


def test_missing_runtime_names_the_extra(runner, tmp_path, monkeypatch):
    import sys

    run, _ = tiny_run(tmp_path, "ego-mlp")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    r = runner.invoke(app, ["export", "onnx", "--run", str(run), "--out", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "onnxruntime" in r.output and "pip install -e '.[export]'" in r.output
    assert not (tmp_path / "m.onnx").exists()
