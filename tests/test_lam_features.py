"""LAM stage inputs: the frozen EfficientNet-Lite0 frame encoder and the per-log feature cache (quick profile)."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from latentvla.config import resolve
from latentvla.data.store import DataError, SceneStore
from latentvla.lam.configuration import EncoderConfig, LAMConfig
from latentvla.lam.encoder import (
    EfficientNetLite0Encoder,
    EncoderError,
    HFVisionEncoder,
    build_encoder,
)
from latentvla.lam.features import FeatureCache, feature_cache_key

LOGS3 = ["log_000000", "log_000001", "log_000002"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread in this module: two oneDNN threads on a busy 2-core machine can run 10x slower (spinning
    on a preempted core), which made this file's run time swing between 20 and 50 s. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def enc_cfg() -> EncoderConfig:
    cfg = resolve(LAMConfig, "lam", "quick").encoder
    assert (cfg.image_height, cfg.image_width, tuple(cfg.grid)) == (64, 128, (1, 2))
    return cfg


@pytest.fixture(scope="module")
def encoder(enc_cfg):
    return build_encoder(enc_cfg)


@pytest.fixture(scope="module")
def built(tiny_world, enc_cfg, tmp_path_factory):
    """The whole tiny world's cache, built once (workers=1)."""
    root = tmp_path_factory.mktemp("feature_cache")
    return FeatureCache.open(tiny_world, enc_cfg, cache_root=root, workers=1, quiet=True)


def _scenes(h: int = 64, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Two very different synthetic frames: a sky/road street view and a saturated colour checkerboard."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2] = (135, 190, 235)  # sky
    a[h // 2:] = (70, 70, 70)  # road
    a[(h // 2 < yy) & (np.abs(xx - w / 2) < (yy - h / 2) * 0.2)] = (240, 240, 240)  # lane marking
    a[h // 3: h // 2 + 6, w // 5: w // 5 + 24] = (180, 20, 20)  # a red car
    b = np.where((((yy // 8) + (xx // 8)) % 2)[..., None] == 1, (255, 220, 0), (20, 0, 160)).astype(np.uint8)
    return a, b


# --- encoder --------------------------------------------------------------------------------------------------
def test_encoder_is_frozen_and_sees_content(encoder):
    assert isinstance(encoder, EfficientNetLite0Encoder)
    assert (encoder.dim, encoder.num_tokens) == (1280, 2)
    assert not any(m.training for m in encoder.model.modules())
    assert not any(p.requires_grad for p in encoder.model.parameters())
    bns = [m for m in encoder.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}

    a, b = _scenes()
    feats = encoder.encode(np.stack([a, b, a.copy()]))
    assert feats.shape == (3, 2, 1280) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std() > 0
    np.testing.assert_array_equal(feats[0], feats[2])  # identical inputs, identical features
    diff = np.abs(feats[0] - feats[1]).mean()
    assert diff > 0.2 * np.abs(feats[0]).mean(), diff  # very different inputs, clearly different features
    after = encoder.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running statistics untouched

    reference = encoder.encode(a[None])
    encoder.model.train()  # frozen even if someone flips the wrapped module to train mode
    np.testing.assert_array_equal(encoder.encode(a[None]), reference)
    assert not encoder.model.training


def test_features_do_not_depend_on_batch_composition(encoder, enc_cfg):
    a, b = _scenes()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (5, 64, 128, 3), dtype=np.uint8)
    alone = encoder.encode(a[None])[0]
    np.testing.assert_allclose(encoder.encode(np.stack([a, b]))[0], alone, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(np.concatenate([noise, a[None]]))[-1], alone, atol=1e-5)
    small = build_encoder(dataclasses.replace(enc_cfg, batch_size=2))  # a split into several batches
    np.testing.assert_allclose(small.encode(np.concatenate([noise, a[None]]))[-1], alone, atol=1e-5)


def test_features_do_not_depend_on_thread_count(encoder):
    images = np.random.default_rng(2).integers(0, 256, (20, 64, 128, 3), dtype=np.uint8)
    one = encoder.encode(images)
    torch.set_num_threads(2)
    try:
        two = encoder.encode(images)
    finally:
        torch.set_num_threads(1)
    np.testing.assert_array_equal(one, two)  # what makes cache bytes equal for workers=1 and workers=2


def test_encoder_resizes_with_inter_area_and_validates_input(encoder):
    import cv2

    a, _ = _scenes(128, 256)
    direct = encoder.encode(cv2.resize(a, (128, 64), interpolation=cv2.INTER_AREA)[None])
    np.testing.assert_array_equal(encoder.encode(a[None]), direct)
    assert encoder.encode(np.zeros((0, 64, 128, 3), np.uint8)).shape == (0, 2, 1280)
    with pytest.raises(ValueError, match="uint8"):
        encoder.encode(a.astype(np.float32)[None])
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        encoder.encode(a)


def test_pretrained_weights_classify_a_real_photo():
    """The shipped ImageNet weights and the (x - 127) / 128 normalisation recognise a real photo: matplotlib's
    bundled Grace Hopper portrait -> ImageNet class 652 'military uniform'."""
    import cv2
    from matplotlib import cbook

    try:
        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except Exception:  # pragma: no cover - matplotlib without its sample data
        pytest.skip("matplotlib sample data not installed")
    img = cv2.imread(str(path))[..., ::-1]
    h, w = img.shape[:2]
    s = min(h, w)
    img = np.ascontiguousarray(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    enc = build_encoder(EncoderConfig(image_height=224, image_width=224, grid=(7, 7)))
    tokens = enc.encode(img[None])  # (1, 49, 1280): the full 7x7 feature map at 224x224
    with torch.no_grad():
        logits = enc.model._fc(torch.from_numpy(tokens.mean(axis=1)))
    assert int(logits.argmax()) == 652


def test_unknown_encoder_and_bad_grid():
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        build_encoder(EncoderConfig(name="resnet50"))
    with pytest.raises(EncoderError, match="grid"):
        build_encoder(EncoderConfig(image_height=64, image_width=128, grid=(4, 8)))  # feature map is only 2x4


def test_hf_encoder_errors(tmp_path, monkeypatch):
    missing = tmp_path / "no_such_model"
    with pytest.raises(EncoderError, match=str(missing)):
        build_encoder(EncoderConfig(name=f"hf:{missing}"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if transformers were not installed
    with pytest.raises(EncoderError, match="transformers") as e:
        build_encoder(EncoderConfig(name=f"hf:{model_dir}"))
    assert str(model_dir) in str(e.value)


def test_hf_encoder_pools_feature_maps_and_patch_tokens(tmp_path, monkeypatch):
    """The HF path with a stand-in transformers module: a CNN-like (B, C, h, w) and a ViT-like (B, 1 + N, D) output."""

    class Out:
        def __init__(self, hidden):
            self.last_hidden_state = hidden

    class Conv(torch.nn.Module):
        config = types.SimpleNamespace()

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 8, stride=8)

        def forward(self, pixel_values):
            return Out(self.conv(pixel_values))

    class ViT(torch.nn.Module):
        config = types.SimpleNamespace(patch_size=16)

        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Conv2d(3, 24, 16, stride=16)

        def forward(self, pixel_values, interpolate_pos_encoding=False):
            assert interpolate_pos_encoding
            x = self.proj(pixel_values).flatten(2).transpose(1, 2)
            return Out(torch.cat([torch.full_like(x[:, :1], 1e3), x], dim=1))  # a CLS token first

    loaded = []

    class AutoModel:
        @staticmethod
        def from_pretrained(path, local_files_only=False):
            assert local_files_only
            loaded.append(path)
            return ViT() if path.endswith("vit") else Conv()

    fake = types.ModuleType("transformers")
    fake.__spec__ = importlib.machinery.ModuleSpec("transformers", None)
    fake.AutoModel = AutoModel
    monkeypatch.setitem(sys.modules, "transformers", fake)
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 128, 3), dtype=np.uint8)
    for name, dim in (("cnn", 16), ("vit", 24)):
        (tmp_path / name).mkdir()
        enc = build_encoder(EncoderConfig(name=f"hf:{tmp_path / name}", image_height=64, image_width=128, grid=(1, 2)))
        assert isinstance(enc, HFVisionEncoder) and enc.model is None  # loaded lazily
        feats = enc.encode(images)
        assert feats.shape == (3, 2, dim) and enc.dim == dim and np.isfinite(feats).all()
        assert feats.max() < 1e3  # the CLS token is not pooled into the patch grid
        assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())
    assert loaded == [str(tmp_path / "cnn"), str(tmp_path / "vit")]


# --- feature cache --------------------------------------------------------------------------------------------
def test_cache_round_trip(built, tiny_world, encoder, enc_cfg):
    store = SceneStore(tiny_world)
    logs = sorted(store.manifest["logs"])
    assert built.built == logs and len(logs) == 10
    assert sorted(p.stem for p in built.path.glob("*.npz")) == logs
    for log in logs[:2]:
        tokens, stamps, images = store.log_images(log, enc_cfg.camera)
        direct = encoder.encode(np.stack(list(images)))
        feats, frame_tokens = built.load_log(log)
        assert feats.dtype == np.float32 and feats.shape == (len(tokens), 2, 1280) and not feats.flags.writeable
        np.testing.assert_allclose(feats, direct, rtol=1e-3, atol=1e-4)  # float16 storage
        assert frame_tokens == tokens
        assert built.timestamps(log).tolist() == stamps and np.all(np.diff(stamps) == 500_000)  # 2 Hz, time order
        assert [built.frame_index(log, t) for t in tokens] == list(range(len(tokens)))
    scene = store.tokens()[0]  # a scene's token is its current frame's token
    log = store.info(scene)["log"]
    current = store.load_scene(scene, with_sim_state=False).frames[3]
    row = built.frame_index(log, scene)
    assert built.frame_tokens(log)[row] == scene and built.timestamps(log)[row] == current.timestamp
    with pytest.raises(KeyError, match="not a frame"):
        built.frame_index(logs[0], "nope")
    with np.load(built.file(logs[0])) as z:
        assert z["features"].dtype == np.float16 and z["timestamps"].dtype == np.int64


def test_cache_bytes_deterministic_across_builds_and_workers(built, tiny_world, enc_cfg, tmp_path):
    again = FeatureCache.open(tiny_world, enc_cfg, cache_root=tmp_path / "again", logs=LOGS3, quiet=True)
    par = FeatureCache.open(tiny_world, enc_cfg, cache_root=tmp_path / "par", logs=LOGS3[:2], workers=2, quiet=True)
    assert again.built == LOGS3 and par.built == LOGS3[:2]
    for log in LOGS3:
        assert again.file(log).read_bytes() == built.file(log).read_bytes()
    for log in LOGS3[:2]:
        assert par.file(log).read_bytes() == built.file(log).read_bytes()


def test_cache_resumes_only_missing_logs(built, tiny_world, enc_cfg, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built.path, root / built.key)
    files = {p.name: p for p in (root / built.key).glob("*.npz")}
    stamps = {n: p.stat().st_mtime_ns for n, p in files.items()}
    original = files["log_000004.npz"].read_bytes()
    files["log_000004.npz"].unlink()
    cache = FeatureCache.open(tiny_world, enc_cfg, cache_root=root, quiet=True)
    assert cache.built == ["log_000004"]
    assert files["log_000004.npz"].read_bytes() == original
    assert all(p.stat().st_mtime_ns == stamps[n] for n, p in files.items() if n != "log_000004.npz")
    assert FeatureCache.open(tiny_world, enc_cfg, cache_root=root, quiet=True).built == []


def test_cache_key_follows_encoder_config(tiny_world, enc_cfg, built):
    key = feature_cache_key(tiny_world, enc_cfg)
    assert built.key == key and built.path.name == key
    assert key == feature_cache_key(tiny_world, dataclasses.replace(enc_cfg))
    for change in ({"grid": (1, 1)}, {"image_height": 96}, {"camera": "cam_l0"}, {"name": "hf:/x"},
                   {"batch_size": 8}):
        other = feature_cache_key(tiny_world, dataclasses.replace(enc_cfg, **change))
        assert other != key and other.split("-")[0] == key.split("-")[0], change


def test_cache_errors(built, tiny_world, enc_cfg, tmp_path):
    with pytest.raises(DataError, match=r"cam_l1.*cam_b0.*cam_f0.*cam_l0.*cam_r0"):
        FeatureCache.open(tiny_world, dataclasses.replace(enc_cfg, camera="cam_l1"), cache_root=tmp_path, quiet=True)
    assert not list(tmp_path.iterdir())  # failed before writing anything
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        FeatureCache.open(tiny_world, dataclasses.replace(enc_cfg, name="vit-b"), cache_root=tmp_path, quiet=True)
    missing = tmp_path / "no_model"
    with pytest.raises(EncoderError, match=str(missing)):
        FeatureCache.open(tiny_world, dataclasses.replace(enc_cfg, name=f"hf:{missing}"), cache_root=tmp_path,
                          quiet=True)
    with pytest.raises(DataError, match="log_999"):
        FeatureCache.open(tiny_world, enc_cfg, cache_root=tmp_path, logs=["log_999"], quiet=True)

    root = tmp_path / "corrupt"
    shutil.copytree(built.path, root / built.key)
    cache = FeatureCache(root / built.key, enc_cfg)
    bad = cache.file("log_000001")
    bad.write_bytes(bad.read_bytes()[:-200])  # truncated
    with pytest.raises(DataError, match=rf"{bad}.*corrupt.*delete it"):
        cache.load_log("log_000001")
    flipped = bytearray(cache.file("log_000002").read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    cache.file("log_000002").write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="corrupt"):
        cache.load_log("log_000002")
    cache.file("log_000003").unlink()
    with pytest.raises(DataError, match="missing"):
        cache.frame_index("log_000003", "x")

    meta = Path(root / built.key / "meta.json")
    meta.write_text(meta.read_text().replace('"weights": "', '"weights": "0'))
    with pytest.raises(DataError, match="delete"):
        FeatureCache.open(tiny_world, enc_cfg, cache_root=root, quiet=True)


def test_lidar_bev_encoder_golden_cells_and_cache(tiny_world, tmp_path):
    """``lidar-bev``: a return lands in the hand-computed patch token and channel, counts clip at max_points, and
    the cache stores the encoding of each frame's own sweep."""
    cfg = EncoderConfig(name="lidar-bev", bev_grid=(4, 4), bev_pixels=64, bev_range_m=32.0)
    enc = build_encoder(cfg)
    assert (enc.sensor, enc.num_tokens, enc.dim) == ("lidar", 16, 2 * 16 * 16)
    # x = 10.2 m ahead, y = 5.3 m right: row floor((32 - 10.2) / 1) = 21, col floor((32 + 5.3) / 1) = 37 -> token
    # (21 // 16) * 4 + 37 // 16 = 6; inside it channel 1 (z 1.0 > 0.2), local (5, 5) -> 256 + 5 * 16 + 5 = 341
    high = np.array([[10.2, -5.3, 1.0, 0.0, 0.0]] * 7, dtype=np.float32)
    low = np.array([[-31.5, 31.5, 0.0, 0.0, 0.0]], dtype=np.float32)  # row 63, col 0: token 12, ch 0, (15, 0)
    out = enc.encode_frames([np.concatenate([high, low]), low[:0]])
    assert out.shape == (2, 16, 512) and out.dtype == np.float32
    expect = np.zeros((2, 16, 512), np.float32)
    expect[0, 6, 341] = 1.0  # 7 returns clipped at max_points = 5
    expect[0, 12, 15 * 16] = 1 / 5
    np.testing.assert_array_equal(out, expect)
    with pytest.raises(EncoderError, match="LiDAR"):
        enc.encode(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(EncoderError, match="bev_pixels"):
        build_encoder(dataclasses.replace(cfg, bev_pixels=30))

    cache = FeatureCache.open(tiny_world, cfg, cache_root=tmp_path, logs=LOGS3[:1], quiet=True)
    store = SceneStore(tiny_world)
    tokens, _, sweeps = store.log_sensor(LOGS3[0], "lidar")
    feats, frame_tokens = cache.load_log(LOGS3[0])
    assert frame_tokens == tokens
    np.testing.assert_allclose(feats, enc.encode_frames(list(sweeps)), atol=1e-3)  # float16 storage of k / 5
    assert feats.shape == (len(tokens), 16, 512) and feats.max() > 0
    assert cache.key != feature_cache_key(tiny_world, dataclasses.replace(cfg, bev_pixels=32))


def test_camera_lidar_features_block_layout(built, tiny_world, enc_cfg, tmp_path):
    """``encoder.lidar``: camera tokens then scaled LiDAR tokens in one block array; the camera part reuses the
    camera-only cache (its key ignores the LiDAR fields); workers reopen the same caches from their paths."""
    from latentvla.lam.features import CameraLidarFeatures, open_features, reopen_features, sensor_configs

    cfg = dataclasses.replace(enc_cfg, lidar=True, lidar_scale=2.0, bev_pixels=16, bev_grid=(2, 2))
    assert feature_cache_key(tiny_world, dataclasses.replace(enc_cfg, bev_pixels=16, bev_grid=(2, 2))) == built.key
    camera_cfg, lidar_cfg = sensor_configs(cfg)
    assert camera_cfg.name == enc_cfg.name and lidar_cfg.name == "lidar-bev" and not camera_cfg.lidar
    feats = open_features(tiny_world, cfg, cache_root=built.path.parent, logs=LOGS3[:2], quiet=True)
    assert isinstance(feats, CameraLidarFeatures) and feats.camera.built == [] and feats.lidar.built == LOGS3[:2]
    assert feats.paths[0] == built.path
    lidar_only = FeatureCache(feats.lidar.path, lidar_cfg)
    for log in LOGS3[:2]:
        x, tokens = feats.load_log(log)
        cam, lid = built.load_log(log)[0], lidar_only.load_log(log)[0]
        assert x.shape == (len(tokens), 2 + 4, 1280 + 2 * 8 * 8) and lid.shape[1:] == (4, 128) and lid.max() > 0
        np.testing.assert_array_equal(x[:, :2, :1280], cam)
        np.testing.assert_array_equal(x[:, 2:, 1280:], 2.0 * lid)
        assert not x[:, :2, 1280:].any() and not x[:, 2:, :1280].any() and not x.flags.writeable
        assert tokens == built.frame_tokens(log) and feats.frame_index(log, tokens[3]) == 3
        np.testing.assert_array_equal(reopen_features([str(p) for p in feats.paths], cfg).load_log(log)[0], x)
    with pytest.raises(ValueError, match="open_features"):
        FeatureCache.open(tiny_world, cfg, cache_root=tmp_path, quiet=True)
    with pytest.raises(ValueError, match="lidar_scale"):
        open_features(tiny_world, dataclasses.replace(cfg, lidar_scale=0.0), cache_root=tmp_path, quiet=True)
    with pytest.raises(ValueError, match="already"):
        open_features(tiny_world, dataclasses.replace(cfg, name="lidar-bev"), cache_root=tmp_path, quiet=True)
