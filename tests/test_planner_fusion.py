"""Teacher fusion and distillation heads on the planner hosts: identity at zero gates, dependence on the teacher,
clear errors, hand-computed KL values, every distillation term reaching its parameters, checkpoint round trips."""

from __future__ import annotations

import math

import pytest
import torch
from test_planner_models import make_batch, small_cfg

from latentvla.planner.checkpoint import load_planner, save_planner
from latentvla.planner.configuration import PlannerConfig
from latentvla.planner.fusion import TEACHER_KEY, distill_losses, soft_kl
from latentvla.planner.modeling import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

T_TOKENS, T_DIM, POS, CODES = 7, 24, 3, 5


def fused_cfg(host: str) -> PlannerConfig:
    cfg = small_cfg(host)
    cfg.fusion.enabled = True
    cfg.fusion.context_tokens, cfg.fusion.context_dim = T_TOKENS, T_DIM
    return cfg


def teacher(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, T_TOKENS, T_DIM, generator=torch.Generator().manual_seed(seed)).half()


def set_gates(model, value: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate_" in name:
                p.fill_(value)


@pytest.mark.parametrize("host", ["transfuser", "ipad"])
def test_zero_gates_reproduce_the_host_and_open_gates_read_the_teacher(host: str) -> None:
    torch.manual_seed(0)
    base = build_model(small_cfg(host)).eval()
    cfg = fused_cfg(host)
    fused = build_model(cfg).eval()
    missing, unexpected = fused.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("extras.fusion.") for k in missing)
    feats, _ = make_batch(cfg)
    with torch.no_grad():
        plain = base(feats)
        same = fused({**feats, TEACHER_KEY: teacher()})
        assert torch.equal(plain["trajectory"], same["trajectory"])  # gates at 0: exactly the host
        set_gates(fused, 1.0)
        a = fused({**feats, TEACHER_KEY: teacher(seed=1)})
        b = fused({**feats, TEACHER_KEY: teacher(seed=2)})
    key = "proposals" if host == "ipad" else "trajectory"
    assert not torch.allclose(plain[key], a[key])
    assert not torch.allclose(a[key], b[key])  # the output depends on what the teacher says


@pytest.mark.parametrize("host", ["transfuser", "ipad"])
def test_fusion_errors_name_the_missing_or_mismatched_teacher(host: str) -> None:
    cfg = fused_cfg(host)
    model = build_model(cfg).eval()
    feats, _ = make_batch(cfg)
    with pytest.raises(ValueError, match=TEACHER_KEY):
        model(feats)
    with pytest.raises(ValueError, match="does not match"):
        model({**feats, TEACHER_KEY: torch.zeros(2, T_TOKENS, T_DIM + 1)})


def test_fusion_and_distillation_refuse_the_ego_mlp() -> None:
    cfg = PlannerConfig(host="ego-mlp")
    cfg.fusion.enabled = True
    with pytest.raises(ValueError, match="ego-mlp"):
        PlannerConfig(host="ego-mlp", fusion=cfg.fusion)
    with pytest.raises(ValueError, match="latent_target"):
        PlannerConfig(host="ipad", distill=type(cfg.distill)(latent_target="soft"))


def test_gates_receive_gradients_from_the_trajectory_loss() -> None:
    cfg = fused_cfg("transfuser")
    model = build_model(cfg)
    feats, targets = make_batch(cfg)
    feats[TEACHER_KEY] = teacher()
    model.compute_loss(feats, targets, model(feats))["loss"].backward()
    gates = [p.grad for n, p in model.named_parameters() if n.endswith("gate_attn")]
    assert gates and all(g is not None and g.abs() > 0 for g in gates)


@pytest.mark.parametrize("host", ["transfuser", "ipad"])
def test_zero_output_blocks_start_as_the_host_and_learn_from_the_first_step(host: str) -> None:
    """Closed tanh gates give the block's own weights no gradient at all; zero output projections with open
    gates start as the host too, but their projections get a gradient from the first step."""
    torch.manual_seed(0)
    base = build_model(small_cfg(host)).eval()
    gated_cfg = fused_cfg(host)
    zero_cfg = fused_cfg(host)
    zero_cfg.fusion.zero_output, zero_cfg.fusion.gate_init = True, 1.0
    feats, targets = make_batch(zero_cfg)
    feats = {**feats, TEACHER_KEY: teacher()}
    grads = {}
    for name, cfg in (("gated", gated_cfg), ("zero", zero_cfg)):
        torch.manual_seed(0)
        model = build_model(cfg)
        model.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            assert torch.equal(model.eval()(feats)["trajectory"], base(feats)["trajectory"])
        model.train()
        model.compute_loss(feats, targets, model(feats))["loss"].backward()
        grads[name] = [p.grad for n, p in model.named_parameters() if n.endswith("attn.proj.weight") and "fusion" in n]
    assert grads["gated"] and all(g is None or g.abs().max() == 0 for g in grads["gated"])
    assert grads["zero"] and all(g is not None and g.abs().max() > 0 for g in grads["zero"])


def test_zero_output_needs_open_gates() -> None:
    cfg = fused_cfg("ipad")
    with pytest.raises(ValueError, match="gate_init"):
        PlannerConfig(host="ipad", fusion=type(cfg.fusion)(enabled=True, zero_output=True))


def test_soft_kl_golden_values() -> None:
    p = torch.tensor([[0.5, 0.5]])
    assert soft_kl(p, torch.zeros(1, 2)).item() == pytest.approx(0.0, abs=1e-7)
    # p = (0.5, 0.5), q = softmax(0, ln 3) = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert soft_kl(p, logits).item() == pytest.approx(want, rel=1e-5)
    # temperature 2: q = softmax(0, ln 3 / 2) = (1, sqrt 3) / (1 + sqrt 3); scaled by T^2 = 4
    q = torch.tensor([1.0, math.sqrt(3.0)]) / (1 + math.sqrt(3.0))
    want_t = 4 * float((p[0] * (p[0] / q).log()).sum())
    assert soft_kl(p, logits, temperature=2.0).item() == pytest.approx(want_t, rel=1e-5)
    # one-hot targets (the labels control): cross-entropy of the true class
    assert soft_kl(torch.tensor([[0.0, 1.0]]), logits).item() == pytest.approx(-math.log(0.75), rel=1e-5)


def student_cfg(host: str) -> PlannerConfig:
    cfg = small_cfg(host)
    d = cfg.distill
    d.latent_target, d.latent_positions, d.latent_codes = "teacher", POS, CODES
    d.full_key = "f" * 16
    return cfg


@pytest.mark.parametrize("host", ["transfuser", "ipad"])
def test_student_terms_and_their_gradients(host: str) -> None:
    cfg = student_cfg(host)
    model = build_model(cfg)
    feats, targets = make_batch(cfg)
    pred = model(feats)
    assert pred["latent_logits"].shape == (2, POS, CODES)
    g = torch.Generator().manual_seed(3)
    targets["latent_probs"] = torch.softmax(torch.randn(2, POS, CODES, generator=g), -1)
    targets["full_plan_features"] = torch.randn(pred["plan_features"].shape, generator=g)
    if host == "ipad":
        targets["full_selection"] = torch.randn(2, cfg.ipad.num_proposals, generator=g)
    terms = model.compute_loss(feats, targets, pred)
    expected = {"latent_kl", "feature_mse"} | ({"score_kl"} if host == "ipad" else set())
    assert expected <= set(terms) and all(terms[k] > 0 for k in expected)
    terms["loss"].backward()
    for name in ("extras.latent.out.weight", "extras.align.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0
    if host == "ipad":  # the score KL reaches the scoring heads through the non-detached selection score
        model.zero_grad()
        d = distill_losses(cfg, targets, model(feats), None)[0]
        assert "score_kl" not in d


def test_switching_a_term_off_removes_it() -> None:
    cfg = student_cfg("ipad")
    cfg.distill.score_weight = 0.0
    cfg.distill.feature_weight = 0.0
    model = build_model(cfg)
    assert model.extras.align is None
    feats, targets = make_batch(cfg)
    targets["latent_probs"] = torch.full((2, POS, CODES), 1.0 / CODES)
    terms = model.compute_loss(feats, targets, model(feats))
    assert "score_kl" not in terms and "feature_mse" not in terms and "latent_kl" in terms


@pytest.mark.parametrize("host", ["transfuser", "ipad"])
def test_fused_and_student_checkpoints_round_trip(host: str, tmp_path) -> None:
    for name, cfg in (("full", fused_cfg(host)), ("student", student_cfg(host))):
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        set_gates(model, 0.5)
        feats, _ = make_batch(cfg)
        feats[TEACHER_KEY] = teacher()
        path = tmp_path / f"{name}.safetensors"
        save_planner(model, cfg, path)
        loaded, cfg2 = load_planner(path)
        assert cfg2 == cfg
        with torch.no_grad():
            a, b = model(feats), loaded(feats)
            assert torch.equal(a["trajectory"], b["trajectory"])
            assert "latent_logits" not in a  # distillation heads are training-only: the student costs its host
            if name == "student":
                a, b = model.train()(feats), loaded.train()(feats)
                assert torch.equal(a["latent_logits"], b["latent_logits"])
