"""Generation contracts: determinism, resume, refusal to clobber, corruption detection, log-disjoint splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from latentvla.config import ConfigError, resolve
from latentvla.data.store import DataError, SceneStore, verify_dataset
from latentvla.world.configuration import WorldConfig
from latentvla.world.families import FAMILIES
from latentvla.world.generate import GenerationError, generate, plan_logs

SMALL = ["scenes=16", "seed=3", "log_seconds=8", "sensors.image_width=64", "sensors.image_height=32",
         "sensors.lidar_beams=4", "sensors.lidar_azimuth_step_deg=6"]


@pytest.fixture(scope="module")
def small_cfg():
    return resolve(WorldConfig, "world", "quick", overrides=SMALL)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory, small_cfg):
    root = tmp_path_factory.mktemp("small") / "w"
    generate(root, small_cfg, workers=1, quiet=True)
    return root


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_manifest_contract(small_world, small_cfg):
    m = json.loads((small_world / "manifest.json").read_text())
    assert set(m) == {"format_version", "seed", "config_hash", "scenes", "logs"}
    assert len(m["scenes"]) == small_cfg.scenes == 16
    for s in m["scenes"]:
        assert set(s) == {"token", "family", "command", "log", "split"}
        assert s["command"] in ("left", "straight", "right", "unknown")
        assert s["family"] in FAMILIES
    for log, entry in m["logs"].items():
        assert entry == {"sha256sums": f"logs/{log}/SHA256SUMS"}
    text = (small_world / "manifest.json").read_text()
    assert text == json.dumps(m, sort_keys=True, indent=1) + "\n"  # sorted keys, nothing volatile
    # SHA256SUMS covers every file of the log, in `sha256sum -c` format.
    log_dir = small_world / "logs" / next(iter(m["logs"]))
    listed = {line.split("  ", 1)[1] for line in (log_dir / "SHA256SUMS").read_text().splitlines()}
    on_disk = {str(p.relative_to(log_dir)) for p in log_dir.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert listed == on_disk


def test_deterministic_across_runs_and_workers(tmp_path, small_world, small_cfg):
    other = tmp_path / "again"
    generate(other, small_cfg, workers=2, quiet=True)
    a, b = _all_files(small_world), _all_files(other)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_seed_changes_data(tmp_path, small_world):
    cfg = resolve(WorldConfig, "world", "quick", overrides=SMALL + ["seed=4", "scenes=5"])
    generate(tmp_path / "s4", cfg, quiet=True)
    tokens_a = {s["token"] for s in json.loads((small_world / "manifest.json").read_text())["scenes"]}
    tokens_b = {s["token"] for s in json.loads((tmp_path / "s4" / "manifest.json").read_text())["scenes"]}
    assert not tokens_a & tokens_b


def test_refuses_non_empty_dir_and_overwrites(tmp_path, small_cfg):
    out = tmp_path / "w"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(GenerationError, match="--overwrite"):
        generate(out, small_cfg, quiet=True)
    with pytest.raises(GenerationError, match="cannot resume"):
        generate(out, small_cfg, resume=True, quiet=True)
    cfg = resolve(WorldConfig, "world", "quick", overrides=SMALL + ["scenes=3"])
    m = generate(out, cfg, overwrite=True, quiet=True)
    assert len(m["scenes"]) == 3
    (out / "notes.txt").write_text("mine")
    with pytest.raises(GenerationError, match="did not write"):
        generate(out, cfg, overwrite=True, quiet=True)
    assert (out / "notes.txt").read_text() == "mine"  # never deletes what it did not write


def test_resume_finishes_without_duplicates(tmp_path, small_world, small_cfg):
    out = tmp_path / "w"
    shutil.copytree(small_world, out)
    logs = sorted((out / "logs").iterdir())
    # Simulate a kill: the manifest is not written yet, one log is missing, another left a half-written temp dir.
    (out / "manifest.json").unlink()
    shutil.rmtree(logs[1])
    (out / "logs" / f".tmp-{logs[1].name}-999").mkdir()
    (out / "logs" / f".tmp-{logs[1].name}-999" / "junk.png").write_bytes(b"x")
    untouched = (logs[0] / "log.json").stat().st_mtime_ns
    generate(out, small_cfg, resume=True, quiet=True)
    assert _all_files(out) == _all_files(small_world)
    assert (logs[0] / "log.json").stat().st_mtime_ns == untouched  # finished logs are not recomputed
    # Resuming a finished dataset is a no-op; resuming with another config is refused.
    generate(out, small_cfg, resume=True, quiet=True)
    other = resolve(WorldConfig, "world", "quick", overrides=SMALL + ["seed=99"])
    with pytest.raises(GenerationError, match="config hash"):
        generate(out, other, resume=True, quiet=True)


def test_corruption_is_detected_and_named(tmp_path, small_world):
    out = tmp_path / "w"
    shutil.copytree(small_world, out)
    store = SceneStore(out)
    token = store.tokens()[0]
    log = store.info(token)["log"]
    meta = json.loads((out / "logs" / log / "log.json").read_text())
    frame = meta["frames"][meta["scenes"][0]["frame_index"]]
    img = out / "logs" / log / frame["sensors"]["cam_f0"]
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0xFF
    img.write_bytes(bytes(data))
    lidar = out / "logs" / log / frame["sensors"]["lidar"]
    lidar.unlink()
    problems = verify_dataset(out)
    assert any(str(img) in p and p.startswith("corrupt") for p in problems)
    assert any(str(lidar) in p and p.startswith("missing") for p in problems)
    with pytest.raises(DataError, match=token) as err:
        SceneStore(out).load_agent_input(token)
    assert str(img) in str(err.value) or str(lidar) in str(err.value)
    assert verify_dataset(small_world) == []


def test_splits_are_log_disjoint(tiny_store):
    split_of_log: dict[str, set] = {}
    for s in tiny_store.manifest["scenes"]:
        split_of_log.setdefault(s["log"], set()).add(s["split"])
    assert all(len(v) == 1 for v in split_of_log.values())
    # Windows (which overlap at stride 1) are cut inside one log only: current frames 3, 4, ... of that log.
    for log in split_of_log:
        meta = tiny_store._log(log)
        idx = [sc["frame_index"] for sc in meta["scenes"]]
        assert idx == list(range(3, 3 + len(idx)))
        assert idx[-1] + 10 < len(meta["frames"])
    assert {sp for v in split_of_log.values() for sp in v} == {"train", "val", "test"}
    assert len(set(tiny_store.tokens())) == len(tiny_store)


def test_family_quotas_per_split():
    cfg = resolve(WorldConfig, "world", "quick", overrides=["scenes=900"])
    plans = plan_logs(cfg)
    assert sum((p.frames - 14) // cfg.stride + 1 for p in plans) == 900
    for split in ("train", "val", "test"):
        fams = [p.family for p in plans if p.split == split]
        n_scenes = sum((p.frames - 14) // cfg.stride + 1 for p in plans if p.split == split)
        if n_scenes >= 200:
            assert set(fams) == set(FAMILIES), split
    test = [p.family for p in plans if p.split == "test"]
    counts = np.array([test.count(f) for f in FAMILIES])
    assert counts.max() - counts.min() <= 1  # family-balanced test split
    train = [p.family for p in plans if p.split == "train"]
    assert train.count("cruise") > 3 * max(train.count(f) for f in FAMILIES if f != "cruise")  # long tail rare


def test_bad_config_values_are_rejected():
    with pytest.raises(ConfigError, match="valid keys"):
        resolve(WorldConfig, "world", "quick", overrides=["scenez=3"])
    with pytest.raises(ValueError, match="valid families"):
        resolve(WorldConfig, "world", "quick", overrides=["family_weights.test.flying_car=1"])
    with pytest.raises(ValueError, match="valid cameras"):
        resolve(WorldConfig, "world", "quick", overrides=["sensors.cameras=[cam_x]"])
    with pytest.raises(ConfigError, match="profile"):
        resolve(WorldConfig, "world", "huge")
    with pytest.raises(ConfigError, match="integer"):
        resolve(WorldConfig, "world", "quick", overrides=["scenes=many"])
