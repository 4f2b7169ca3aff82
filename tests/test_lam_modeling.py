"""Latent action model on synthetic motion: codes learn the action, stage 2 cannot see ego motion, VQ upkeep.

Synthetic world: each of T tokens is an object whose D features are a random appearance plus a fixed linear
encoding of its 2-D position. Between the two frames the whole scene is translated by one of K "ego" shifts (the
camera moves; ``ego_motion`` = one-hot of that shift + noise) and the first half of the objects additionally moves
by one of E "environment" motions (other agents).
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

from latentvla.lam.configuration import LAMModelConfig, QuantizerConfig
from latentvla.lam.modeling import ForwardDynamics, InverseDynamics, LatentActionModel
from latentvla.lam.quantizer import VectorQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")

T, D, K, E, EM = 6, 8, 4, 3, 5  # tokens, feature dim, ego shifts, env motions, ego_motion_dim (5: unique size)
_g = torch.Generator().manual_seed(123)
POS = torch.randn(2, D, generator=_g)  # 2-D position -> feature directions
EGO_SHIFTS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * 1.5
ENV_MOVES = torch.tensor([[0.0, 0.0], [2.0, 2.0], [-2.0, 2.0]])


def make_batch(gen: torch.Generator, b: int, env: bool = True):
    pos = torch.randn(b, T, 2, generator=gen)
    appearance = 0.5 * torch.randn(b, T, D, generator=gen)
    s = torch.randint(K, (b,), generator=gen)
    e = torch.randint(E, (b,), generator=gen) if env else torch.zeros(b, dtype=torch.long)
    move = EGO_SHIFTS[s][:, None].expand(b, T, 2).clone()
    move[:, : T // 2] += ENV_MOVES[e][:, None]
    feat_t = appearance + pos @ POS
    feat_tp = appearance + (pos + move) @ POS
    ego_motion = torch.cat([F.one_hot(s, K).float(), torch.randn(b, EM - K, generator=gen)], 1)
    return feat_t, feat_tp, ego_motion, s, e


def purity(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose label is their code's majority label."""
    return sum(int(torch.bincount(labels[codes == c]).max()) for c in codes.unique()) / len(labels)


def purity_gain(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Purity above the same codes' purity for shuffled labels (chance, which grows with the number of codes)."""
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    return purity(codes, labels) - purity(codes, shuffled)


def tiny_cfg(mode: str = "ema", queries: int = 1, every: int = 20) -> LAMModelConfig:
    q = QuantizerConfig(codebook_size=8, code_dim=8, mode=mode, dead_code_every=every)
    return LAMModelConfig(dim=32, depth=1, heads=2, num_queries=queries, ego_motion_dim=EM, env=q, ego=q)


def train(model: LatentActionModel, steps: int, seed: int, batch: int = 64, **opt_kw) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, foreach=True, **opt_kw)
    model.train()
    losses = []
    for _ in range(steps):
        feat_t, feat_tp, ego_motion, _, _ = make_batch(gen, batch)
        out = model(feat_t, feat_tp, ego_motion)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    return losses


@pytest.fixture(scope="module")
def stage1_model() -> LatentActionModel:
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg(), D, T)
    train(model, steps=150, seed=1, weight_decay=0.0)
    return model.eval()


def test_stage1_codes_learn_the_environment_motion(stage1_model):
    feat_t, feat_tp, ego_motion, s, e = make_batch(torch.Generator().manual_seed(99), 512)
    with torch.no_grad():
        out = stage1_model(feat_t, feat_tp, ego_motion)
    assert set(out) >= {"loss", "recon_mse", "copy_mse", "vq_loss", "pred", "env_codes", "env_perplexity",
                        "env_codes_used"}
    assert "ego_codes" not in out
    assert out["env_codes"].shape == (512, 1) and out["env_codes"].dtype == torch.long
    assert int(out["env_codes_used"]) >= 3 and float(out["env_perplexity"]) > 2.0
    assert float(out["recon_mse"]) < 0.3 * float(out["copy_mse"])
    codes = out["env_codes"][:, 0]
    # Ego motion is given to stage 1, so its codes describe the other agents' motion, not the ego shift.
    assert purity_gain(codes, e) > 0.2
    assert purity_gain(codes, e) > purity_gain(codes, s)


def test_stage2_ego_codes_ignore_ego_motion_and_stage1_is_frozen(stage1_model):
    model = copy.deepcopy(stage1_model)
    stage1 = {k: v.clone() for k, v in model.state_dict().items() if k.split(".")[0] in ("env_idm", "env_vq", "fdm1")}
    model.set_stage(2)
    # AdamW over *all* parameters with weight decay: frozen ones must still not move (no grad -> skipped).
    train(model, steps=150, seed=2, weight_decay=0.1)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in stage1.items()), "stage-1 weights/codebook changed in stage 2"
    assert not model.env_idm.training and not model.env_vq.training and not model.fdm1.training

    model.eval()
    feat_t, feat_tp, ego_motion, s, e = make_batch(torch.Generator().manual_seed(98), 512)
    with torch.no_grad():
        out = model(feat_t, feat_tp, ego_motion)
    assert float(out["recon_mse"]) < 0.3 * float(out["copy_mse"])
    ego = out["ego_codes"][:, 0]
    assert purity_gain(ego, s) > 0.3  # stage 2 recovers the ego shift without ever seeing ego_motion
    assert purity_gain(ego, s) > purity_gain(ego, e)

    env1, ego1 = model.encode(feat_t, feat_tp, ego_motion)
    assert torch.equal(ego1, out["ego_codes"]) and torch.equal(ego1, model.encode_ego(feat_t, feat_tp))
    # A large batch: the other agents' motion is also visible in the frames, so the env IDM may lean on
    # ego_motion for only a fraction of samples (0.7-70% over training seeds).
    feat_t, feat_tp, ego_motion, _, _ = make_batch(torch.Generator().manual_seed(95), 4096)
    perturbed = ego_motion + 10.0 * torch.randn(ego_motion.shape, generator=torch.Generator().manual_seed(5))
    env1, ego1 = model.encode(feat_t, feat_tp, ego_motion)
    env2, ego2 = model.encode(feat_t, feat_tp, perturbed)
    assert torch.equal(ego1, ego2)
    assert (env1 != env2).any(), "env codes should depend on ego_motion"
    with torch.no_grad():
        z1, z2 = model.env_idm(feat_t, feat_tp, ego_motion), model.env_idm(feat_t, feat_tp, perturbed)
    assert not torch.allclose(z1, z2, atol=1e-3)


def test_stage2_modules_have_no_path_for_ego_motion():
    model = LatentActionModel(tiny_cfg(), D, T)
    assert list(inspect.signature(model.ego_idm.forward).parameters) == ["feat_t", "feat_tp"]
    assert type(model.ego_idm) is InverseDynamics and model.fdm2.cond is None
    for module in (model.ego_idm, model.ego_vq, model.fdm2):
        for name, p in module.named_parameters():
            assert EM not in p.shape, f"{name} {tuple(p.shape)} could consume ego_motion"
    assert any(EM in p.shape for p in model.env_idm.parameters())  # the stage-1 IDM does
    feat_t, feat_tp, ego_motion, _, _ = make_batch(torch.Generator().manual_seed(0), 4)
    latents = [torch.zeros(4, 1, 8), torch.zeros(4, 1, 8)]
    with pytest.raises(ValueError, match="no conditioning"):
        model.fdm2(feat_t, latents, ego_motion)
    with pytest.raises(TypeError):
        model.ego_idm(feat_t, feat_tp, ego_motion)


def test_ego_odometry_decoder_is_an_output_only(stage1_model, tmp_path):
    """ego_recon_weight > 0: a decoder rebuilds the ego motion from the ego latents alone. The ego IDM still has
    no input for it (codes identical whatever ego_motion is), the decoder trains in stage 2 only and round-trips."""
    cfg = tiny_cfg()
    cfg.ego_recon_weight, cfg.ego_recon_dims = 1.0, [0, 1]
    model = LatentActionModel(cfg, D, T)
    model.load_state_dict(stage1_model.state_dict(), strict=False)  # the decoder is new
    assert list(inspect.signature(model.ego_idm.forward).parameters) == ["feat_t", "feat_tp"]
    assert not any(p.requires_grad for p in model.ego_motion_head.parameters())  # stage 1: not trained
    model.set_stage(2)
    before = model.ego_motion_head[0].weight.detach().clone()
    train(model, steps=60, seed=3)
    assert not torch.equal(before, model.ego_motion_head[0].weight)
    feat_t, feat_tp, ego_motion, s, e = make_batch(torch.Generator().manual_seed(97), 256)
    model.eval()
    with torch.no_grad():
        out = model(feat_t, feat_tp, ego_motion)
    assert "motion_mse" in out and float(out["motion_mse"]) < 1.0  # standardised target: 1.0 = predict the mean
    _, ego1 = model.encode(feat_t, feat_tp, ego_motion)
    _, ego2 = model.encode(feat_t, feat_tp, ego_motion + 5.0)
    assert torch.equal(ego1, ego2)
    model.save(tmp_path / "m.safetensors")
    again = LatentActionModel.load(tmp_path / "m.safetensors")
    assert torch.equal(again.encode(feat_t, feat_tp, ego_motion)[1], ego1)
    with pytest.raises(ValueError, match="ego_recon_dims"):
        bad = tiny_cfg()
        bad.ego_recon_weight, bad.ego_recon_dims = 1.0, [EM]
        LatentActionModel(bad, D, T)


@pytest.mark.parametrize("mode", ["ema", "straight-through"])
def test_both_quantizer_modes_train(mode):
    torch.manual_seed(0)
    model = LatentActionModel(tiny_cfg(mode, queries=2), D, T)
    losses = train(model, steps=80, seed=3)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    model.eval()
    feat_t, feat_tp, ego_motion, _, _ = make_batch(torch.Generator().manual_seed(97), 256)
    with torch.no_grad():
        out = model(feat_t, feat_tp, ego_motion)
    assert out["env_codes"].shape == (256, 2)
    assert float(out["recon_mse"]) < float(out["copy_mse"])
    assert int(out["env_codes_used"]) > 1


@pytest.mark.parametrize("mode", ["ema", "straight-through"])
def test_dead_code_restart_revives_unused_codes(mode):
    cfg = QuantizerConfig(codebook_size=8, code_dim=4, mode=mode, ema_decay=0.9, dead_code_every=10,
                          dead_code_threshold=0.5)
    vq = VectorQuantizer(cfg, generator=torch.Generator().manual_seed(0)).train()
    far = torch.full((6, 4), 1000.0) + torch.arange(6.0)[:, None]
    vq.init_codebook(torch.cat([torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]), far]))
    gen = torch.Generator().manual_seed(1)
    for _ in range(9):
        out = vq(torch.randn(16, 4, 4, generator=gen))
        assert int(out.codes_used) <= 2 and int(out.codes.max()) <= 1
    out = vq(torch.randn(16, 4, 4, generator=gen))  # 10th step: restart
    assert vq.codebook[2:].abs().max() < 10, "dead codes were not moved onto the data"
    used = torch.zeros(8, dtype=torch.bool)
    for _ in range(5):
        out = vq(torch.randn(16, 4, 4, generator=gen))
        used[out.codes.unique()] = True
    assert used[2:].sum() >= 4, f"revived codes unused: {used.tolist()}"
    assert float(out.perplexity) > 3.0


def test_frozen_quantizer_never_changes():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=4, code_dim=3, dead_code_every=2)).train()
    vq(torch.randn(8, 2, 3))  # data-dependent init
    vq.freeze()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    for _ in range(6):
        out = vq(torch.randn(8, 2, 3) + 50.0)  # far away: would trigger EMA drift and restarts
    assert all(torch.equal(v, vq.state_dict()[k]) for k, v in before.items())
    assert out.codes.shape == (8, 2) and out.quantized.shape == (8, 2, 3)


def test_straight_through_gradient_reaches_the_encoder():
    vq = VectorQuantizer(QuantizerConfig(codebook_size=4, code_dim=3, mode="straight-through")).train()
    z = torch.randn(5, 2, 3, requires_grad=True)
    out = vq(z)
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert vq.codebook.grad is not None and vq.codebook.grad.abs().sum() > 0


def test_same_seed_same_training():
    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(7)
        model = LatentActionModel(tiny_cfg(queries=2, every=5), D, T)
        train(model, steps=12, seed=4, batch=16)
        model.set_stage(2)
        train(model, steps=12, seed=5, batch=16)
        return model.state_dict()

    a, b = run(), run()
    assert int(a["env_vq.steps"]) == 12 and int(a["ego_vq.steps"]) == 12  # restarts ran (every 5 steps)
    assert all(torch.equal(v, b[k]) for k, v in a.items())


def test_save_load_round_trip(stage1_model, tmp_path):
    model = copy.deepcopy(stage1_model)
    model.set_stage(2)
    path = tmp_path / "lam.safetensors"
    model.save(path)
    loaded = LatentActionModel.load(path)
    assert loaded.stage == 2 and loaded.cfg == model.cfg and (loaded.feat_dim, loaded.tokens) == (D, T)
    assert loaded.env_vq.frozen and not any(p.requires_grad for p in loaded.env_idm.parameters())
    feat_t, feat_tp, ego_motion, _, _ = make_batch(torch.Generator().manual_seed(96), 64)
    for x, y in zip(model.encode(feat_t, feat_tp, ego_motion), loaded.encode(feat_t, feat_tp, ego_motion)):
        assert torch.equal(x, y)
    lat_a = model.latent_vectors(feat_t, feat_tp, ego_motion)
    lat_b = loaded.latent_vectors(feat_t, feat_tp, ego_motion)
    assert lat_a["env"].shape == (64, 1, 8) and all(torch.equal(lat_a[k], lat_b[k]) for k in ("env", "ego"))

    loaded.train()  # labelling in training mode still uses running statistics and changes nothing
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    assert torch.equal(loaded.encode(feat_t, feat_tp, ego_motion)[0], model.encode(feat_t, feat_tp, ego_motion)[0])
    assert loaded.training and all(torch.equal(v, loaded.state_dict()[k]) for k, v in before.items())

    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="not a latentvla.lam"):
        LatentActionModel.load(other)


def test_input_errors_are_clear():
    model = LatentActionModel(tiny_cfg(queries=2), D, T)
    feat_t, feat_tp, ego_motion, _, _ = make_batch(torch.Generator().manual_seed(0), 4)
    with pytest.raises(ValueError, match=r"feat_t must have shape \(\*, 6, 8\), got \(4, 5, 8\)"):
        model(feat_t[:, :5], feat_tp, ego_motion)
    with pytest.raises(ValueError, match=r"feat_tp must have shape \(4, 6, 8\)"):
        model(feat_t, feat_tp[:3], ego_motion)
    with pytest.raises(ValueError, match=r"ego_motion must have shape \(4, 5\)"):
        model(feat_t, feat_tp, ego_motion[:, :4])
    bad = feat_tp.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="feat_tp contains NaN"):
        model(feat_t, bad, ego_motion)
    with pytest.raises(ValueError, match="ego_motion contains NaN"):
        model.encode(feat_t, feat_tp, torch.full_like(ego_motion, float("inf")))
    with pytest.raises(ValueError, match="floating-point"):
        model(feat_t.long(), feat_tp, ego_motion)
    with pytest.raises(ValueError, match="feat_t must be a torch.Tensor"):
        model.encode_ego(feat_t.numpy(), feat_tp)
    with pytest.raises(ValueError, match="latents must have shape"):
        model.env_vq(torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        model.set_stage(3)
    with pytest.raises(ValueError, match="mode"):
        VectorQuantizer(QuantizerConfig(mode="gumbel"))
    with pytest.raises(ValueError, match="latent groups"):
        ForwardDynamics(D, T, tiny_cfg(), (8,))(feat_t, [])


def test_fitted_inputs_projection_and_difference_round_trip(tmp_path):
    """fit_inputs standardises ego motion and PCA-projects features; both survive save/load; idm_diff trains."""
    cfg = copy.deepcopy(tiny_cfg())
    cfg.feat_proj, cfg.idm_diff = 4, True
    gen = torch.Generator().manual_seed(0)
    feat_t, feat_tp, ego_motion = make_batch(gen, 32)[:3]
    model = LatentActionModel(cfg, feat_dim=feat_t.shape[-1], tokens=feat_t.shape[1])
    model.fit_inputs(torch.cat([feat_t, feat_tp]), ego_motion * 10 + 3)
    assert torch.allclose(model.motion_mean, ego_motion.mean(0) * 10 + 3, atol=1e-4)
    basis = model.feat_basis
    assert basis.shape == (feat_t.shape[-1], 4)
    assert torch.allclose(basis.t() @ basis, torch.eye(4), atol=1e-4)  # orthonormal principal directions
    out = model(feat_t, feat_tp, ego_motion)
    assert out["pred"].shape == (32, feat_t.shape[1], 4) and torch.isfinite(out["loss"])
    out["loss"].backward()
    model.save(tmp_path / "m.safetensors")
    loaded = LatentActionModel.load(tmp_path / "m.safetensors")
    assert torch.equal(loaded.feat_basis, model.feat_basis) and torch.equal(loaded.motion_std, model.motion_std)
    assert torch.equal(loaded.encode_ego(feat_t, feat_tp), model.encode_ego(feat_t, feat_tp))
