"""Sensor layout of the LAM's tokens and ego-motion compensation of the LiDAR tokens (lam.sensors).

The warp is checked on real BEV histograms (``LidarBEVEncoder``): a static scene seen from two ego poses must
cancel after warping, an agent that moved must remain, and the per-sensor IDMs must ignore the other sensor.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvla.lam.configuration import EncoderConfig, LAMModelConfig
from latentvla.lam.encoder import LidarBEVEncoder
from latentvla.lam.modeling import LatentActionModel
from latentvla.lam.sensors import SensorLayout, sensor_layout, warp_lidar

pytestmark = pytest.mark.usefixtures("one_thread")

ENC = EncoderConfig(name="lidar-bev", bev_range_m=16.0, bev_pixels=32, bev_grid=(4, 4))


def _blob(rng: np.random.Generator, x: float, y: float, n: int = 400, size: float = 2.0) -> np.ndarray:
    pts = rng.normal(size=(n, 3)) * [size, size, 0.3]
    return pts + [x, y, 1.0]


def _to_frame(points: np.ndarray, pose: tuple[float, float, float]) -> np.ndarray:
    """Frame-t points -> the frame of an ego at ``pose`` (x, y, heading in frame t)."""
    dx, dy, th = pose
    c, s = np.cos(th), np.sin(th)
    x, y = points[:, 0] - dx, points[:, 1] - dy
    return np.stack([c * x + s * y, -s * x + c * y, points[:, 2]], axis=1)


def _tokens(clouds: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(LidarBEVEncoder(ENC).encode_frames(clouds))


def _scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([_blob(rng, x, y) for x, y in ((6, 4), (-5, -6), (10, -8), (-9, 7), (2, 11))])


def test_layout_of_camera_lidar_features():
    enc = EncoderConfig(grid=(3, 6), lidar=True, bev_pixels=64, bev_grid=(4, 4))
    lay = sensor_layout(enc, tokens=18 + 16, feat_dim=1280 + 512)
    assert (lay.camera_tokens, lay.lidar_tokens, lay.lidar_offset) == (18, 16, 1280)
    assert lay.token_slice("camera") == slice(0, 18) and lay.token_slice("lidar") == slice(18, 34)
    assert lay.token_slice("all") == slice(0, 34)
    assert SensorLayout.from_json(lay.to_json()) == lay
    camera_only = sensor_layout(EncoderConfig(), tokens=8, feat_dim=1280)
    with pytest.raises(ValueError, match="no lidar tokens.*encoder.lidar=true"):
        camera_only.token_slice("lidar")
    with pytest.raises(ValueError, match="sensor must be one of"):
        lay.token_slice("radar")


def test_warp_at_zero_motion_keeps_objects_and_holds_the_ground():
    """No ego motion: the above-ground channel is frame t+Δ's exactly; the ground channel is frame t's."""
    lay = sensor_layout(ENC, 16, 2 * 8 * 8)
    a, b = _tokens([_scene(0), _scene(1)])
    a[:, :64] += 0.5  # ground channel (the first 8 x 8 of each channel-major patch)
    out = warp_lidar(a[None], b[None], torch.zeros(1, 3), lay)[0]
    torch.testing.assert_close(out[:, 64:], b[:, 64:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, :64], a[:, :64], atol=1e-6, rtol=0)


@pytest.mark.parametrize("pose", [(4.0, 0.0, 0.0), (3.0, 1.0, 0.15), (6.0, -1.0, -0.1)])
def test_warp_cancels_a_static_scene(pose):
    """The same static world seen after the ego moved: warped back into frame t it nearly equals frame t (the
    residual is the bilinear resampling of 1 m cells), while the unwarped change is large."""
    lay = sensor_layout(ENC, 16, 2 * 8 * 8)
    world = _scene()
    ft, ftp = _tokens([world, _to_frame(world, pose)])
    warped = warp_lidar(ft[None], ftp[None], torch.tensor([pose]), lay)[0]
    before = (ftp - ft).square().sum()
    after = (warped - ft).square().sum()
    assert after < 0.2 * before, (float(after), float(before))


def test_warp_keeps_what_the_other_agents_did():
    """A blob that moved 5 m in the world stays visible after warping, at its new place in frame t."""
    lay = sensor_layout(ENC, 16, 2 * 8 * 8)
    rng = np.random.default_rng(3)
    static = _scene()
    agent_t, agent_tp = _blob(rng, 8.0, -4.0), _blob(rng, 8.0, 1.0)  # moved +5 m in y (to the left)
    pose = (4.0, 0.0, 0.05)
    ft, ftp = _tokens([np.concatenate([static, agent_t]), _to_frame(np.concatenate([static, agent_tp]), pose)])
    ref = _tokens([np.concatenate([static, agent_tp])])[0]  # the moved agent, seen from frame t
    warped = warp_lidar(ft[None], ftp[None], torch.tensor([pose]), lay)[0]

    def cos(change: torch.Tensor) -> float:
        truth = ref - ft
        return float((change * truth).sum() / (change.norm() * truth.norm()))

    assert cos(warped - ft) > 0.7 and cos(ftp - ft) < 0.3, (cos(warped - ft), cos(ftp - ft))


def _split_model(**kw) -> tuple[LatentActionModel, SensorLayout]:
    lay = SensorLayout(camera_tokens=3, lidar_tokens=16, lidar_offset=4, bev_grid=(4, 4), bev_pixels=32,
                       bev_range_m=16.0)
    cfg = LAMModelConfig(dim=32, depth=1, heads=2, num_queries=2, ego_motion_dim=5, **kw)
    torch.manual_seed(0)
    return LatentActionModel(cfg, feat_dim=4 + 128, tokens=19, layout=lay).eval(), lay


def test_each_idm_reads_only_its_sensor(tmp_path):
    model, lay = _split_model(env_sensor="lidar", ego_sensor="camera", env_warp=True)
    g = torch.Generator().manual_seed(1)
    ft, ftp, em = torch.randn(8, 19, 132, generator=g), torch.randn(8, 19, 132, generator=g), torch.randn(8, 5)
    em[:, :3] = 0.3 * em[:, :3]
    env, ego = model.encode(ft, ftp, em)
    cam, lid = lay.token_slice("camera"), lay.token_slice("lidar")
    ft2, ftp2 = ft.clone(), ftp.clone()
    ft2[:, cam], ftp2[:, cam] = torch.randn(8, 3, 132), torch.randn(8, 3, 132)  # new camera tokens
    assert torch.equal(model.encode(ft2, ftp2, em)[0], env)
    ft3, ftp3 = ft.clone(), ftp.clone()
    ft3[:, lid], ftp3[:, lid] = torch.randn(8, 16, 132), torch.randn(8, 16, 132)  # new LiDAR tokens
    assert torch.equal(model.encode(ft3, ftp3, em)[1], ego)
    model.save(tmp_path / "m.safetensors")
    loaded = LatentActionModel.load(tmp_path / "m.safetensors")
    assert loaded.layout == lay
    for a, b in zip(loaded.encode(ft, ftp, em), (env, ego)):
        assert torch.equal(a, b)


def test_split_sensors_need_the_sensor():
    with pytest.raises(ValueError, match="no lidar tokens"):
        LatentActionModel(LAMModelConfig(dim=32, depth=1, heads=2, env_sensor="lidar"), feat_dim=8, tokens=4)
    with pytest.raises(ValueError, match="no lidar tokens"):
        LatentActionModel(LAMModelConfig(dim=32, depth=1, heads=2, env_warp=True), feat_dim=8, tokens=4)
