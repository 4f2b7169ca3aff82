"""Planner host networks: shapes, losses, gradients, overfitting, Hungarian matching, iPad proposals, fusion
and checkpoint round trips. Small configs (32x32 BEV, small images) keep the file to seconds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from latentvla.planner.configuration import BEV_CLASSES, PROPOSAL_SCORE_COLUMNS, PlannerConfig
from latentvla.planner.modeling import (
    agent_loss,
    agent_matching_cost,
    build_model,
    hungarian_match,
)
from latentvla.planner.modeling_ipad import default_anchors, sampling_matrix, selection_score
from latentvla.planner.modeling_transfuser import bilinear_matrix

pytestmark = pytest.mark.usefixtures("one_thread")

P, N_AGENTS, N_PROP, H, W = 32, 4, 8, 32, 64
S = len(PROPOSAL_SCORE_COLUMNS)


def small_cfg(host: str, camera: str = "efficientnet-lite0") -> PlannerConfig:
    cfg = PlannerConfig(host=host)
    cfg.features.camera.backbone = camera
    cfg.features.camera.image_height, cfg.features.camera.image_width = H, W
    cfg.features.lidar.pixels = P
    cfg.features.targets.bev_pixels = P
    cfg.features.targets.max_agents = N_AGENTS
    cfg.transfuser.dim = 64
    cfg.ipad.num_proposals = N_PROP
    cfg.ego_mlp.hidden = 64
    return cfg


def make_batch(cfg: PlannerConfig, b: int = 2, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    cam = cfg.features.camera
    h, w3 = cam.image_height, 3 * cam.image_width
    feats = {"ego_status": torch.randn(b, 8, generator=g), "lidar_bev": torch.rand(b, 2, P, P, generator=g)}
    if cam.backbone == "none":
        feats["camera"] = torch.randint(0, 256, (b, 3, h, w3), generator=g).to(torch.uint8)
    else:
        feats["camera_s16"] = (torch.rand(b, 112, h // 16, w3 // 16, generator=g) * 4).half()
        feats["camera_s32"] = (torch.rand(b, 320, h // 32, w3 // 32, generator=g) * 4).half()
    t = torch.arange(1, 9, dtype=torch.float32) * 0.5
    speed = 5 + 5 * torch.rand(b, 1, generator=g)
    traj = torch.stack([speed * t, 0.2 * speed * t * torch.randn(b, 1, generator=g), 0.05 * t.expand(b, -1)], -1)
    labels = torch.zeros(b, N_AGENTS)
    labels[:, :2] = 1.0
    states = torch.randn(b, N_AGENTS, 5, generator=g) * torch.tensor([10.0, 10.0, 1.0, 1.0, 0.5]) + torch.tensor(
        [0.0, 0.0, 0.0, 4.5, 2.0])
    targets = {
        "trajectory": traj,
        "bev_semantic_map": torch.randint(0, len(BEV_CLASSES), (b, P, P), generator=g).to(torch.uint8),
        "agent_states": states * labels[..., None],
        "agent_labels": labels,
        "proposal_targets": torch.rand(b, N_PROP, S, generator=g),
    }
    return feats, targets


VARIANTS = [("ego-mlp", "efficientnet-lite0"), ("transfuser", "efficientnet-lite0"), ("transfuser", "none"),
            ("ipad", "efficientnet-lite0"), ("ipad", "none")]


def built(host: str, camera: str = "efficientnet-lite0", seed: int = 0):
    torch.manual_seed(seed)
    cfg = small_cfg(host, camera)
    return cfg, build_model(cfg)


@pytest.mark.parametrize("host,camera", VARIANTS)
def test_forward_shapes_and_finite(host: str, camera: str) -> None:
    cfg, model = built(host, camera)
    feats, _ = make_batch(cfg, b=3)
    out = model(feats)
    assert out["trajectory"].shape == (3, 8, 3)
    expected = {"trajectory": (3, 8, 3)}
    if host != "ego-mlp":
        dim = cfg.transfuser.dim
        expected.update(agent_states=(3, N_AGENTS, 5), agent_labels=(3, N_AGENTS),
                        bev_semantic_map=(3, len(BEV_CLASSES), P, P),
                        plan_features=(3, 1 if host == "transfuser" else N_PROP, dim))
    if host == "ipad":
        k = cfg.ipad.iterations
        expected.update(proposals=(3, N_PROP, 8, 3), proposals_per_iter=(3, k, N_PROP, 8, 3),
                        proposal_scores=(3, N_PROP, S), proposal_imitation=(3, N_PROP), selected=(3,))
        assert out["selected"].dtype == torch.long
    for key, shape in expected.items():
        assert tuple(out[key].shape) == shape, key
        assert torch.isfinite(out[key].float()).all(), key
    assert (out["trajectory"][..., 2].abs() <= math.pi + 1e-5).all() or host == "ipad"


# Parameters a host builds but deliberately never uses: the transfuser decodes only the pooled camera token,
# so the camera tokens' positional embedding (used by iPad's cross-attention) gets no gradient there.
UNUSED = {"transfuser": {"trunk.image_pos"}}


@pytest.mark.parametrize("host,camera", VARIANTS)
def test_loss_terms_and_gradients(host: str, camera: str) -> None:
    cfg, model = built(host, camera)
    feats, targets = make_batch(cfg)
    losses = model.compute_loss(feats, targets, model(feats))
    assert "loss" in losses
    for key, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), key
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert set(missing) == UNUSED.get(host, set())


def test_ipad_score_term_is_zero_without_targets() -> None:
    cfg, model = built("ipad")
    feats, targets = make_batch(cfg)
    del targets["proposal_targets"]
    losses = model.compute_loss(feats, targets, model(feats))
    assert float(losses["score"]) == 0.0 and torch.isfinite(losses["loss"])


@pytest.mark.parametrize("host", ["ego-mlp", "transfuser", "ipad"])
def test_overfits_one_batch(host: str) -> None:
    cfg, model = built(host, seed=1)
    feats, targets = make_batch(cfg, b=4, seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = model.compute_loss(feats, targets, model(feats))["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = float(model.compute_loss(feats, targets, model(feats))["loss"].detach())
    assert final < 0.5 * first, (first, final)


def test_hungarian_matching_golden() -> None:
    # One real agent at (5, 5) and one padding slot. Query 0 sits exactly on the agent but says "no agent"
    # (logit -5); query 1 is 30 m (L1) away but confident (logit +5). Costs (10 * BCE + L1 * label):
    # q0-n0 50.07, q0-n1 0.07, q1-n0 30.07, q1-n1 50.07 -> the optimum pairs q0 with padding, q1 with the agent.
    pred = torch.tensor([[[5.0, 5.0, 0.0, 4.0, 2.0], [20.0, 20.0, 0.0, 4.0, 2.0]]])
    logits = torch.tensor([[-5.0, 5.0]])
    gt = torch.tensor([[[5.0, 5.0, 0.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0]])
    cost = agent_matching_cost(pred, logits, gt, labels, 10.0, 1.0)
    bce5 = math.log1p(math.exp(-5.0))
    expected = torch.tensor([[[10 * (5 + bce5), 10 * bce5], [10 * bce5 + 30, 10 * (5 + bce5)]]])
    assert torch.allclose(cost, expected, atol=1e-4)
    rows, cols = hungarian_match(cost)[0]
    assert list(rows) == [0, 1] and list(cols) == [1, 0]
    terms = agent_loss(pred, logits, gt, labels)
    assert float(terms["agent_box"]) == pytest.approx(30.0)  # L1 over the 5 columns / 1 real agent
    assert float(terms["agent_class"]) == pytest.approx(bce5, rel=1e-4)  # both queries matched "correctly"
    # two real agents swapped: the matching un-swaps them and the box loss is zero
    gt2 = torch.stack([pred[0, 1], pred[0, 0]])[None]
    rows, cols = hungarian_match(agent_matching_cost(pred, torch.tensor([[5.0, 5.0]]), gt2,
                                                     torch.ones(1, 2), 10.0, 1.0))[0]
    assert list(cols) == [1, 0]
    assert float(agent_loss(pred, torch.tensor([[5.0, 5.0]]), gt2, torch.ones(1, 2))["agent_box"]) == 0.0


def test_agent_heading_error_wraps() -> None:
    pred = torch.tensor([[[0.0, 0.0, math.pi - 0.1, 4.0, 2.0]]])
    gt = torch.tensor([[[0.0, 0.0, -math.pi + 0.1, 4.0, 2.0]]])
    box = agent_loss(pred, torch.tensor([[5.0]]), gt, torch.ones(1, 1))["agent_box"]
    assert float(box) == pytest.approx(0.2, abs=1e-5)


def test_bev_upsampling_matches_interpolate() -> None:
    x = torch.randn(2, 3, 8, 8)
    up = torch.einsum("hi,bciw,jw->bchj", bilinear_matrix(8, 32), x, bilinear_matrix(8, 32))
    assert torch.allclose(up, F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# iPad
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 8, 32, 64])
def test_default_anchors_fan(n: int) -> None:
    a = default_anchors(n)
    assert a.shape == (n, 8, 3) and np.isfinite(a).all()
    assert len({tuple(np.round(x, 4).ravel()) for x in a}) == n  # all distinct
    assert (np.abs(a[:, :, 1]).max(axis=1) < 1e-6).any()  # a straight one
    assert (a[:, -1, 0] > 0).all()  # all drive forward
    if n >= 8:  # both directions
        assert (a[:, -1, 1] > 1).any() and (a[:, -1, 1] < -1).any()


def test_ipad_anchors_round_trip_state_dict() -> None:
    cfg = small_cfg("ipad")
    anchors = default_anchors(N_PROP)[::-1].copy() * 1.5
    model = build_model(cfg, anchors)
    state = model.state_dict()
    assert "anchors" in state and torch.allclose(state["anchors"], torch.from_numpy(anchors))
    fresh = build_model(cfg)
    assert not torch.allclose(fresh.anchors, state["anchors"])
    fresh.load_state_dict(state)
    assert torch.equal(fresh.anchors, model.anchors)
    with pytest.raises(ValueError, match="anchors must be"):
        build_model(cfg, anchors[:3])
    with pytest.raises(ValueError, match="takes no anchors"):
        build_model(small_cfg("transfuser"), anchors)


def test_selection_picks_best_combined_score() -> None:
    weights = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    scores = torch.full((1, 3, S), 5.0)
    scores[0, 0, 0] = -3.0  # proposal 0: likely collision
    scores[0, 2, 1] = -1.0  # proposal 2: leaves the drivable area, but most expert-like
    imitation = torch.tensor([[3.0, 1.0, 2.0]])
    combined = selection_score(scores, imitation, weights)
    expected = (F.logsigmoid(scores) * weights).sum(-1) + F.log_softmax(imitation, -1)
    assert torch.allclose(combined, expected)
    assert int(combined.argmax()) == 1  # the imitation favourite (0) and runner-up (2) are vetoed by scores
    # the columns with zero weight do not matter
    scores[0, 1, 2:] = -20.0
    assert int(selection_score(scores, imitation, weights).argmax()) == 1


def test_ipad_selected_trajectory_and_refinement() -> None:
    cfg, model = built("ipad")
    feats, _ = make_batch(cfg, b=3)
    out = model(feats)
    combined = selection_score(out["proposal_scores"], out["proposal_imitation"], model.score_weights)
    assert torch.equal(out["selected"], combined.argmax(-1))
    assert torch.equal(out["trajectory"], out["proposals"][torch.arange(3), out["selected"]])
    per_iter = out["proposals_per_iter"]
    assert torch.equal(per_iter[:, -1], out["proposals"])
    anchors = model.anchors.expand_as(per_iter[:, 0])
    assert not torch.allclose(per_iter[:, 0], anchors, atol=0, rtol=0)
    for k in range(1, per_iter.shape[1]):
        assert not torch.allclose(per_iter[:, k], per_iter[:, k - 1], atol=0, rtol=0)


def test_ipad_bev_sampling_orientation() -> None:
    cfg, model = built("ipad")
    c, side = model.trunk.bev_channels, model.trunk.bev_size[0]
    cell = 2 * cfg.features.lidar.range_m / side
    rows = torch.arange(side, dtype=torch.float32)[:, None].expand(side, side)
    bev = torch.zeros(1, c, side, side)
    bev[0, 0], bev[0, 1] = rows, rows.t()  # channel 0: row index, channel 1: column index
    x, y = 6.0, -5.0  # 6 m ahead, 5 m to the right
    proposal = torch.zeros(1, 1, 8, 3)
    proposal[..., 0], proposal[..., 1] = x, y
    s = model.sample_bev(bev, proposal).view(1, 1, -1, c)
    assert torch.allclose(s[0, 0, :, 0], torch.tensor((cfg.features.lidar.range_m - x) / cell - 0.5))
    assert torch.allclose(s[0, 0, :, 1], torch.tensor((cfg.features.lidar.range_m - y) / cell - 0.5))


def test_forward_shifted_grid_moves_sampling_and_agent_boxes() -> None:
    cfg = small_cfg("ipad")
    cfg.features.lidar.center_x_m = 16.0
    torch.manual_seed(0)
    model = build_model(cfg)
    c, side = model.trunk.bev_channels, model.trunk.bev_size[0]
    cell = 2 * cfg.features.lidar.range_m / side
    bev = torch.zeros(1, c, side, side)
    bev[0, 0] = torch.arange(side, dtype=torch.float32)[:, None].expand(side, side)  # channel 0: row index
    x = 20.0
    proposal = torch.zeros(1, 1, 8, 3)
    proposal[..., 0] = x
    s = model.sample_bev(bev, proposal).view(1, 1, -1, c)
    assert torch.allclose(s[0, 0, -1, 0], torch.tensor((cfg.features.lidar.range_m + 16.0 - x) / cell - 0.5))
    head = model.agent_head
    states, _ = head(torch.randn(2, 5, cfg.transfuser.dim) * 100)  # saturated tanh: the grid's edges
    assert states[..., 0].min() >= 16.0 - 32.0 - 1e-4 and states[..., 0].max() <= 16.0 + 32.0 + 1e-4
    assert states[..., 0].max() > 32.0  # reaches past the centred square's edge


def test_sampling_matrix_points_along_the_trajectory() -> None:
    w = sampling_matrix(4, 8)
    assert torch.allclose(w.sum(1), torch.ones(4))
    xs = torch.arange(9, dtype=torch.float32)  # origin, then poses 1..8
    assert torch.allclose(w @ xs, torch.tensor([2.0, 4.0, 6.0, 8.0]))
    assert torch.allclose(sampling_matrix(3, 8) @ xs, torch.tensor([8 / 3, 16 / 3, 8.0]))


# ---------------------------------------------------------------------------------------------------------------
# Fusion hook, checkpoints, normalisation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host,camera", VARIANTS)
def test_safetensors_round_trip(tmp_path, host: str, camera: str) -> None:
    cfg, model = built(host, camera)
    feats, targets = make_batch(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):  # move weights and batch-norm statistics away from their initial values
        loss = model.compute_loss(feats, targets, model(feats))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path / "planner.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(123)
    loaded = build_model(cfg).eval()
    loaded.load_state_dict(load_file(str(path)))
    with torch.no_grad():
        assert torch.equal(model(feats)["trajectory"], loaded(feats)["trajectory"])


@pytest.mark.parametrize("host", ["ego-mlp", "transfuser", "ipad"])
def test_set_normalization(host: str) -> None:
    cfg, model = built(host)
    model.eval()
    feats, _ = make_batch(cfg)
    with torch.no_grad():
        before = model(feats)["trajectory"]
    mean = np.arange(8, dtype=np.float32)
    std = np.array([2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.5], dtype=np.float32)  # a zero std becomes 1
    model.set_normalization({"ego_mean": mean, "ego_std": torch.from_numpy(std)})
    state = model.state_dict()
    assert torch.equal(state["ego_mean"], torch.from_numpy(mean))
    assert torch.equal(state["ego_std"], torch.tensor([2.0, 2.0, 1.0, 1.0, 0.5, 0.5, 1.0, 0.5]))
    with torch.no_grad():
        assert not torch.allclose(before, model(feats)["trajectory"])
    with pytest.raises(ValueError, match="unknown"):
        model.set_normalization({"ego_men": mean})
    with pytest.raises(ValueError, match="8 finite"):
        model.set_normalization({"ego_mean": mean[:3]})


def test_input_errors_are_clear() -> None:
    cfg, model = built("transfuser")
    feats, _ = make_batch(cfg)
    with pytest.raises(ValueError, match="lidar_bev"):
        model({**feats, "lidar_bev": feats["lidar_bev"][:, :1]})
    with pytest.raises(ValueError, match="camera_s16"):
        model({k: v for k, v in feats.items() if k != "camera_s16"})
    with pytest.raises(ValueError, match="ego_status"):
        model({**feats, "ego_status": feats["ego_status"][:, :4]})


def test_transfuser_ego_prior_starts_at_the_ego_plan_and_learns_the_scene() -> None:
    """With ``transfuser.ego_prior`` the untrained host's trajectory is exactly the ego-status MLP's; one
    optimiser step later the scene correction moves it (the zero-initialised layer learns)."""
    from latentvla.planner.modeling import bounded_poses

    torch.manual_seed(0)
    cfg = small_cfg("transfuser")
    cfg.transfuser.ego_prior = True
    model = build_model(cfg)
    feats, targets = make_batch(cfg, b=3)
    with torch.no_grad():
        prior = bounded_poses(model.ego_prior(model.normalized_ego(feats)).view(3, 8, 3))
        assert torch.equal(model(feats)["trajectory"], prior)
    opt = torch.optim.SGD(model.traj_head.parameters(), lr=0.1)
    model.compute_loss(feats, targets, model(feats))["loss"].backward()
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(feats)["trajectory"], prior)
    # the plain host has no prior module
    assert build_model(small_cfg("transfuser")).ego_prior is None
