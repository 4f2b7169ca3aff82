"""The metric cache: content equals a fresh build, deterministic and worker-independent shards, resume, a key that
changes with the data, loud errors on corruption."""

from __future__ import annotations

import json
import shutil

import pytest

from latentvla.data.store import DataError
from latentvla.eval.metric_cache import MetricCache, MetricCacheConfig, build, cache_key, dataset_digest
from latentvla.eval.scene_inputs import scene_inputs


def test_entries_equal_a_fresh_build(tiny_cache, tiny_store):
    for tok in tiny_cache.tokens[::17]:
        cached = tiny_cache.load(tok)
        fresh = scene_inputs(tiny_store.load_scene(tok, with_sim_state=False))
        a, b = cached.to_dict(), fresh.to_dict()
        assert a.pop("reference_poses") is not None and len(cached.reference_poses) == 50
        b.pop("reference_poses")
        assert a.pop("previous_token") == tiny_cache.load(tok).previous_token
        b.pop("previous_token")
        assert a == b


def test_previous_token_is_the_same_log_half_a_second_earlier(tiny_cache):
    linked = 0
    for tok in tiny_cache.tokens:
        s = tiny_cache.load(tok)
        if s.previous_token is not None:
            prev = tiny_cache.load(s.previous_token)
            assert prev.log_name == s.log_name
            assert s.t0_us - prev.t0_us == pytest.approx(500_000, abs=1_000)
            linked += 1
    assert linked > len(tiny_cache.tokens) // 2


def test_resume_rebuilds_only_missing_shards_identically(tiny_cache, tiny_world, tmp_path):
    path = tmp_path / "copy"
    shutil.copytree(tiny_cache.path, path)
    shards = sorted((path / "shards").glob("*.bin"))
    victim = shards[1]
    original = victim.read_bytes()
    victim.unlink()
    stats = build(tiny_world, path, workers=1, quiet=True)
    log = victim.name[: -len(".bin")]
    assert stats["built_scenes"] == sum(1 for v in tiny_cache.index["scenes"].values() if v == log)
    assert victim.read_bytes() == original  # deterministic bytes


def test_workers_build_identical_shards(tiny_cache, tiny_world, tmp_path):
    path = tmp_path / "w2"
    build(tiny_world, path, workers=2, quiet=True)
    for shard in sorted((tiny_cache.path / "shards").glob("*.bin")):
        assert (path / "shards" / shard.name).read_bytes() == shard.read_bytes()


def test_key_follows_data_and_config(tiny_world, tmp_path):
    copy = tmp_path / "data"
    copy.mkdir()
    shutil.copy(tiny_world / "manifest.json", copy / "manifest.json")
    for log in json.loads((tiny_world / "manifest.json").read_text())["logs"]:
        (copy / "logs" / log).mkdir(parents=True)
        shutil.copy(tiny_world / "logs" / log / "SHA256SUMS", copy / "logs" / log / "SHA256SUMS")
    before = dataset_digest(copy)
    assert before == dataset_digest(tiny_world)
    sums = next((copy / "logs").glob("*/SHA256SUMS"))
    sums.write_text(sums.read_text().replace("0", "1", 1))
    assert dataset_digest(copy) != before
    assert cache_key(tiny_world, MetricCacheConfig()) != cache_key(tiny_world, MetricCacheConfig(map_radius=50.0))


def test_only_the_requested_logs_are_built(tiny_world, tiny_store, tmp_path):
    tokens = tiny_store.tokens("test")
    cache = MetricCache.open(tiny_world, cache_root=tmp_path, workers=1, quiet=True, tokens=tokens)
    built = {p.name[: -len(".bin")] for p in (cache.path / "shards").glob("*.bin")}
    assert built == {tiny_store.info(t)["log"] for t in tokens}
    assert cache.ensure(tokens) == 0  # nothing left to do
    assert cache.load(tokens[0]).token == tokens[0]


def test_corrupt_shard_is_reported(tiny_cache, tmp_path):
    path = tmp_path / "corrupt"
    shutil.copytree(tiny_cache.path, path)
    shard = sorted((path / "shards").glob("*.bin"))[0]
    shard.write_bytes(b"not a zip")
    cache = MetricCache(path, tiny_cache.index)
    with pytest.raises(DataError, match="corrupt"):
        cache.load_log(shard.name[: -len(".bin")])
    with pytest.raises(KeyError, match="not in the metric cache"):
        cache.load("no-such-token")
