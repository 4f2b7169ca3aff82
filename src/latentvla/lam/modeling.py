"""Two-stage latent action model (LAM) over frozen visual feature tokens.

The recipe is LAPO/LAPA/Genie's: an inverse dynamics model (IDM) sees frames t and t+Δ and emits a few latent
tokens; a vector-quantised bottleneck turns them into discrete codes; a forward dynamics model (FDM) must rebuild
frame t+Δ from frame t and the codes alone, so the codes are forced to carry "what changed". LatentVLA (after
UniVLA's task-centric LAM) splits what changed into two parts:

* stage 1: the IDM and FDM are both given the ego's privileged motion (``ego_motion``), so the env latents only
  need to explain the rest of the scene (other agents, lights): the *environment* action;
* stage 2: stage 1 is frozen; a new IDM that cannot see ``ego_motion`` (its ``forward`` has no such argument)
  and a new codebook must explain what the frozen env latents do not: the *ego* action, the VLA's target.

All models work on (B, T, D) feature tokens and predict the residual ``feat_tp - feat_t``, so "copy the current
frame" is the zero-output baseline and ``recon_mse < copy_mse`` means the codes carry real information.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from latentvla.lam.configuration import LAMModelConfig, QuantizerConfig
from latentvla.lam.quantizer import VectorQuantizer, check_tensor
from latentvla.lam.sensors import SensorLayout, warp_lidar

FORMAT = "latentvla.lam/3"  # 2: input statistics; 3: optional ego-motion readout of the stage-2 FDM



# ---------------------------------------------------------------------------------------------------------------
# Transformer pieces (nanoGPT-style, bidirectional)
# ---------------------------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # no mask: every token sees both frames and the queries
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)


class FeatureTokens(nn.Module):
    """(B, T, D) frozen features -> (B, T, dim) tokens with learned position and frame embeddings.

    The input LayerNorm makes the model indifferent to the feature extractor's scale (EfficientNet features are
    non-negative with a large range); the frame embedding tells the transformer which frame a token comes from.
    """

    def __init__(self, feat_dim: int, tokens: int, dim: int, frames: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(feat_dim)
        self.proj = nn.Linear(feat_dim, dim)
        self.pos = nn.Parameter(torch.randn(tokens, dim) * 0.5)
        self.frame = nn.Parameter(torch.randn(frames, dim) * 0.5)

    def forward(self, feat: Tensor, frame: int) -> Tensor:
        return self.proj(self.norm(feat)) + self.pos + self.frame[frame]


def _cond_mlp(cond_dim: int, dim: int) -> nn.Module:
    """Ego motion (a handful of numbers) -> one token."""
    return nn.Sequential(nn.Linear(cond_dim, dim), nn.GELU(), nn.Linear(dim, dim))


def _check_frames(feat_t: Tensor, feat_tp: Tensor | None, tokens: int, feat_dim: int) -> int:
    check_tensor("feat_t", feat_t, (None, tokens, feat_dim))
    b = feat_t.shape[0]
    if feat_tp is not None:
        check_tensor("feat_tp", feat_tp, (b, tokens, feat_dim))
    return b


# ---------------------------------------------------------------------------------------------------------------
# Inverse and forward dynamics
# ---------------------------------------------------------------------------------------------------------------


class _IDMCore(nn.Module):
    """Shared body of the IDMs: [queries, tokens_t, tokens_tp, extra tokens] -> transformer -> query outputs.

    The latents are batch-normalised (no affine) per code dimension before quantisation. Without it the query
    outputs are dominated by a sample-independent offset, the commitment loss and the freshly initialised FDM
    shrink what little varies, and the codebook collapses onto one code before the FDM learns to use it
    (observed on the synthetic tests, most often when the FDM can lean on ego_motion instead). With unit
    variance per dimension, collapse is impossible and the codes live on a fixed scale. Eval mode uses running
    statistics, so labels are per-sample deterministic.
    """

    def __init__(self, feat_dim: int, tokens: int, cfg: LAMModelConfig, code_dim: int) -> None:
        super().__init__()
        self.feat_dim, self.tokens = feat_dim, tokens
        self.embed = FeatureTokens(feat_dim, tokens, cfg.dim, frames=2)
        self.queries = nn.Parameter(torch.randn(cfg.num_queries, cfg.dim) * 0.02)
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads)
        self.head = nn.Linear(cfg.dim, code_dim)
        self.norm = nn.BatchNorm1d(code_dim, affine=False)
        # idm_diff: the second frame enters as the change feat_tp - feat_t (own LayerNorm and embeddings), so the
        # transformer need not learn to subtract two 1280-d token sets to see what moved.
        self.embed_diff = FeatureTokens(feat_dim, tokens, cfg.dim, frames=1) if cfg.idm_diff else None

    def _encode(self, feat_t: Tensor, feat_tp: Tensor, extra: list[Tensor]) -> Tensor:
        b = _check_frames(feat_t, feat_tp, self.tokens, self.feat_dim)
        q = self.queries.expand(b, -1, -1)
        second = self.embed(feat_tp, 1) if self.embed_diff is None else self.embed_diff(feat_tp - feat_t, 0)
        x = torch.cat([q, self.embed(feat_t, 0), second, *extra], dim=1)
        if self.training and b * q.shape[1] < 2:
            raise ValueError("training needs batch * num_queries >= 2 (the latents are batch-normalised)")
        z = self.head(self.transformer(x)[:, : q.shape[1]])
        return self.norm(z.transpose(1, 2)).transpose(1, 2)


class InverseDynamics(_IDMCore):
    """Unconditioned IDM (stage 2's ego IDM): (feat_t, feat_tp) -> (B, Q, code_dim) pre-quantisation latents.

    Deliberately has no conditioning argument or parameters: the ego codes must be computable, and must be
    computed, without the privileged ego motion, or the VLA's targets would leak the answer.
    """

    def forward(self, feat_t: Tensor, feat_tp: Tensor) -> Tensor:
        return self._encode(feat_t, feat_tp, [])


class ConditionedInverseDynamics(_IDMCore):
    """Stage 1's env IDM: like InverseDynamics plus one token made from ``cond`` (the ego motion)."""

    def __init__(self, feat_dim: int, tokens: int, cfg: LAMModelConfig, code_dim: int, cond_dim: int) -> None:
        super().__init__(feat_dim, tokens, cfg, code_dim)
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be >= 1 (use InverseDynamics for none), got {cond_dim}")
        self.cond_dim = cond_dim
        self.cond = _cond_mlp(cond_dim, cfg.dim)

    def forward(self, feat_t: Tensor, feat_tp: Tensor, cond: Tensor) -> Tensor:
        check_tensor("ego_motion", cond, (feat_t.shape[0], self.cond_dim))
        return self._encode(feat_t, feat_tp, [self.cond(cond)[:, None]])


class ForwardDynamics(nn.Module):
    """FDM: (feat_t, latent groups[, cond]) -> predicted feat_tp (B, T, D).

    ``latent_dims`` gives the code_dim of each latent group (stage 1: (env,), stage 2: (env, ego)); each group has
    its own projection plus group and slot embeddings. The head predicts the residual feat_tp - feat_t, so "copy
    the current frame" is the zero output. The head is deliberately *not* zero-initialised: a zero head sends no
    reconstruction gradient to the latents, and meanwhile the commitment loss collapses them onto one code.
    ``cond_dim == 0`` builds no conditioning path and ``forward`` then refuses a ``cond``.
    """

    def __init__(
        self, feat_dim: int, tokens: int, cfg: LAMModelConfig, latent_dims: Sequence[int], cond_dim: int = 0
    ) -> None:
        super().__init__()
        if not latent_dims:
            raise ValueError("ForwardDynamics needs at least one latent group")
        self.feat_dim, self.tokens, self.cond_dim = feat_dim, tokens, cond_dim
        self.latent_dims = tuple(latent_dims)
        self.embed = FeatureTokens(feat_dim, tokens, cfg.dim, frames=1)
        self.latent_proj = nn.ModuleList(nn.Linear(d, cfg.dim) for d in self.latent_dims)
        self.group = nn.Parameter(torch.randn(len(self.latent_dims), cfg.dim) * 0.5)
        self.slot = nn.Parameter(torch.randn(cfg.num_queries, cfg.dim) * 0.5)  # slots have distinct roles
        self.cond = _cond_mlp(cond_dim, cfg.dim) if cond_dim > 0 else None
        self.transformer = Transformer(cfg.dim, cfg.depth, cfg.heads)
        self.head = nn.Linear(cfg.dim, feat_dim)
        nn.init.zeros_(self.head.bias)

    def forward(self, feat_t: Tensor, latents: Sequence[Tensor], cond: Tensor | None = None) -> Tensor:
        b = _check_frames(feat_t, None, self.tokens, self.feat_dim)
        if len(latents) != len(self.latent_dims):
            raise ValueError(f"expected {len(self.latent_dims)} latent groups, got {len(latents)}")
        parts = []
        for i, (z, proj) in enumerate(zip(latents, self.latent_proj)):
            check_tensor(f"latents[{i}]", z, (b, self.slot.shape[0], self.latent_dims[i]))
            parts.append(proj(z) + self.group[i] + self.slot)
        if self.cond is None:
            if cond is not None:
                raise ValueError("this ForwardDynamics was built with cond_dim=0 and takes no conditioning")
        else:
            if cond is None:
                raise ValueError(f"ego_motion of shape ({b}, {self.cond_dim}) is required")
            check_tensor("ego_motion", cond, (b, self.cond_dim))
            parts.append(self.cond(cond)[:, None])
        x = torch.cat([self.embed(feat_t, 0), *parts], dim=1)
        return feat_t + self.head(self.transformer(x)[:, : self.tokens])


# ---------------------------------------------------------------------------------------------------------------
# The two-stage model
# ---------------------------------------------------------------------------------------------------------------


def model_config_from_dict(d: dict) -> LAMModelConfig:
    d = dict(d)
    env, ego = QuantizerConfig(**d.pop("env")), QuantizerConfig(**d.pop("ego"))
    return LAMModelConfig(**d, env=env, ego=ego)


class LatentActionModel(nn.Module):
    """Environment latents (stage 1, ego motion given) then ego latents (stage 2, ego motion hidden).

    Stage 1 trains ``env_idm`` + ``env_vq`` + ``fdm1``; stage 2 freezes them and trains ``ego_idm`` + ``ego_vq`` +
    ``fdm2``. Modules of the stage not being trained have ``requires_grad=False`` (an optimiser over
    ``model.parameters()`` therefore leaves them alone) and the frozen stage-1 modules stay in eval mode even
    after ``model.train()``.
    """

    def __init__(
        self, cfg: LAMModelConfig, feat_dim: int, tokens: int, generator: torch.Generator | None = None,
        layout: SensorLayout | None = None,
    ) -> None:
        super().__init__()
        if feat_dim < 1 or tokens < 1:
            raise ValueError(f"feat_dim and tokens must be >= 1, got {feat_dim}, {tokens}")
        self.layout = layout or SensorLayout(camera_tokens=tokens)  # which tokens are which sensor's (lam.sensors)
        if self.layout.tokens != tokens:
            raise ValueError(f"the sensor layout has {self.layout.tokens} tokens, the features {tokens}")
        self.env_tokens, self.ego_tokens = (self.layout.token_slice(s) for s in (cfg.env_sensor, cfg.ego_sensor))
        if cfg.env_warp:
            self.layout.token_slice("lidar")  # raises unless the features hold LiDAR tokens
        if cfg.ego_motion_dim < 1:
            raise ValueError(f"ego_motion_dim must be >= 1, got {cfg.ego_motion_dim}")
        if cfg.feat_proj < 0 or cfg.feat_proj > feat_dim:
            raise ValueError(f"feat_proj must be in [0, feat_dim={feat_dim}], got {cfg.feat_proj}")
        self.cfg, self.feat_dim, self.tokens = cfg, feat_dim, tokens
        # Fixed input statistics, set from the train split by ``fit_inputs`` before stage 1 (saved with the weights):
        # the ego motion is standardised per dimension (metres, radians and m/s differ by 10-100x in spread), and
        # with ``feat_proj`` the features are centred and projected onto their top principal components, which
        # makes every model cheaper (the 1280-d projections dominate CPU time) and the reconstruction target
        # the feature variance that matters. Identity until fitted.
        self.register_buffer("motion_mean", torch.zeros(cfg.ego_motion_dim))
        self.register_buffer("motion_std", torch.ones(cfg.ego_motion_dim))
        dim = cfg.feat_proj or feat_dim
        if cfg.feat_proj:
            self.register_buffer("feat_mean", torch.zeros(feat_dim))
            self.register_buffer("feat_basis", torch.eye(feat_dim)[:, :dim].clone())
        env_d, ego_d = cfg.env.code_dim, cfg.ego.code_dim
        n_env, n_ego = (s.stop - s.start for s in (self.env_tokens, self.ego_tokens))
        self.env_idm = ConditionedInverseDynamics(dim, n_env, cfg, env_d, cfg.ego_motion_dim)
        self.env_vq = VectorQuantizer(cfg.env, generator)
        self.fdm1 = ForwardDynamics(dim, tokens, cfg, (env_d,), cond_dim=cfg.ego_motion_dim)
        self.ego_idm = InverseDynamics(dim, n_ego, cfg, ego_d)
        self.ego_vq = VectorQuantizer(cfg.ego, generator)
        bad = [d for d in cfg.ego_recon_dims if not 0 <= d < cfg.ego_motion_dim]
        if bad:
            raise ValueError(f"ego_recon_dims {bad} out of range for ego_motion_dim {cfg.ego_motion_dim}")
        self.recon_dims = list(cfg.ego_recon_dims) or list(range(cfg.ego_motion_dim))
        self.fdm2 = ForwardDynamics(dim, tokens, cfg, (env_d, ego_d))  # no ego motion
        # Optional odometry decoder that sees the ego latents *only* (see LAMModelConfig.ego_recon_weight): the
        # ego codes alone must tell what the ego did; the ego IDM still never receives the ego motion.
        self.ego_motion_head = (nn.Sequential(nn.Linear(cfg.num_queries * ego_d, cfg.dim), nn.GELU(),
                                              nn.Linear(cfg.dim, len(self.recon_dims)))
                                if cfg.ego_recon_weight > 0 else None)
        self.stage = 1
        self.set_stage(1)

    @torch.no_grad()
    def fit_inputs(self, features: Tensor, ego_motion: Tensor, max_rows: int = 20000) -> None:
        """Set the input statistics from train data: ``features`` (N, tokens, feat_dim) frames, ``ego_motion``
        (M, ego_motion_dim) windows. Deterministic (an evenly spaced subset of at most ``max_rows`` tokens)."""
        check_tensor("features", features, (None, self.tokens, self.feat_dim))
        check_tensor("ego_motion", ego_motion, (None, self.cfg.ego_motion_dim))
        self.motion_mean.copy_(ego_motion.mean(0))
        std = ego_motion.std(0) if len(ego_motion) > 1 else torch.ones_like(self.motion_mean)
        self.motion_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
        if self.cfg.feat_proj:
            flat = features.reshape(-1, self.feat_dim).double()
            flat = flat[torch.linspace(0, len(flat) - 1, min(len(flat), max_rows)).long()]
            mean = flat.mean(0)
            _, _, vh = torch.linalg.svd(flat - mean, full_matrices=False)
            basis = vh[: self.cfg.feat_proj].t()
            basis = basis * torch.where(basis.sum(0) < 0, -1.0, 1.0)  # deterministic signs
            self.feat_mean.copy_(mean.float())
            self.feat_basis[:, : basis.shape[1]].copy_(basis.float())

    def _prepare(self, feat_t: Tensor, feat_tp: Tensor, ego_motion: Tensor | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Raw inputs -> the models' inputs (projected features of t, t+Δ and t+Δ as the env stage sees it, i.e.
        with ``env_warp`` its LiDAR resampled into frame t; standardised ego motion)."""
        warp = self.cfg.env_warp and ego_motion is not None
        feat_env = warp_lidar(feat_t, feat_tp, ego_motion[:, :3], self.layout) if warp else feat_tp
        if self.cfg.feat_proj:
            feat_t, feat_tp = ((x - self.feat_mean) @ self.feat_basis for x in (feat_t, feat_tp))
            feat_env = (feat_env - self.feat_mean) @ self.feat_basis if warp else feat_tp
        if ego_motion is not None:
            ego_motion = (ego_motion - self.motion_mean) / self.motion_std
        return feat_t, feat_tp, feat_env, ego_motion

    def _env_latents(self, feat_t: Tensor, feat_env: Tensor, ego_motion: Tensor) -> Tensor:
        return self.env_idm(feat_t[:, self.env_tokens], feat_env[:, self.env_tokens], ego_motion)

    def _ego_latents(self, feat_t: Tensor, feat_tp: Tensor) -> Tensor:
        return self.ego_idm(feat_t[:, self.ego_tokens], feat_tp[:, self.ego_tokens])

    def _stage_modules(self) -> tuple[list[nn.Module], list[nn.Module]]:
        head = [self.ego_motion_head] if self.ego_motion_head is not None else []
        return [self.env_idm, self.env_vq, self.fdm1], [self.ego_idm, self.ego_vq, self.fdm2, *head]

    def set_stage(self, stage: int) -> None:
        """Select the trained stage. Stage 2 freezes stage 1 (weights, codebook, eval mode)."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        self.stage = stage
        s1, s2 = self._stage_modules()
        for m in s1:
            m.requires_grad_(stage == 1)
        for m in s2:
            m.requires_grad_(stage == 2)
        if stage == 2:
            self.env_vq.freeze()
        else:
            self.env_vq.unfreeze()
        self.train(self.training)

    def train(self, mode: bool = True) -> LatentActionModel:
        super().train(mode)
        if self.stage == 2:
            for m in self._stage_modules()[0]:
                m.eval()
        return self

    def _check_inputs(self, feat_t: Tensor, feat_tp: Tensor, ego_motion: Tensor | None) -> None:
        b = _check_frames(feat_t, feat_tp, self.tokens, self.feat_dim)
        if ego_motion is not None:
            check_tensor("ego_motion", ego_motion, (b, self.cfg.ego_motion_dim))

    def forward(self, feat_t: Tensor, feat_tp: Tensor, ego_motion: Tensor) -> dict[str, Tensor]:
        """One training/validation pass of the current stage; ``loss`` is what the optimiser should minimise."""
        self._check_inputs(feat_t, feat_tp, ego_motion)
        feat_t, feat_tp, feat_env, ego_motion = self._prepare(feat_t, feat_tp, ego_motion)
        copy_mse = F.mse_loss(feat_t, feat_tp).detach()
        out: dict[str, Tensor] = {"copy_mse": copy_mse}
        aux: Tensor | float = 0.0
        if self.stage == 1:
            env = self.env_vq(self._env_latents(feat_t, feat_env, ego_motion))
            pred = self.fdm1(feat_t, [env.quantized], ego_motion)
            target = feat_env  # with env_warp: the LiDAR in frame t, the environment's motion only
            vq_loss = env.loss
        else:
            with torch.no_grad():
                env = self.env_vq(self._env_latents(feat_t, feat_env, ego_motion))
            ego = self.ego_vq(self._ego_latents(feat_t, feat_tp))
            target = feat_tp
            pred = self.fdm2(feat_t, [env.quantized.detach(), ego.quantized])
            vq_loss = ego.loss
            out.update(ego_codes=ego.codes, ego_perplexity=ego.perplexity.detach(), ego_codes_used=ego.codes_used)
            if self.ego_motion_head is not None:  # the ego's own odometry as a second reconstruction target
                motion = self.ego_motion_head(ego.quantized.flatten(1))
                motion_mse = F.mse_loss(motion, ego_motion[:, self.recon_dims])
                aux = aux + self.cfg.ego_recon_weight * motion_mse
                out["motion_mse"] = motion_mse.detach()
        recon = F.mse_loss(pred, target)
        out.update(
            loss=recon + vq_loss + aux,
            recon_mse=recon.detach(),
            vq_loss=vq_loss.detach(),
            pred=pred,
            env_codes=env.codes,
            env_perplexity=env.perplexity.detach(),
            env_codes_used=env.codes_used,
        )
        return out

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval mode (running batch-norm statistics, no codebook updates) and no autograd, then restore."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def encode_ego(self, feat_t: Tensor, feat_tp: Tensor) -> Tensor:
        """Ego codes (B, Q) from the two frames only: the labels a VLA learns to predict."""
        self._check_inputs(feat_t, feat_tp, None)
        feat_t, feat_tp, _, _ = self._prepare(feat_t, feat_tp, None)
        with self._inference():
            return self.ego_vq.quantize(self._ego_latents(feat_t, feat_tp))[0]

    def encode(self, feat_t: Tensor, feat_tp: Tensor, ego_motion: Tensor) -> tuple[Tensor, Tensor]:
        """(env_codes (B, Q), ego_codes (B, Q)) in eval mode; changes nothing. Ego codes ignore ``ego_motion``."""
        (env, _), (ego, _), _, _ = self._quantized(feat_t, feat_tp, ego_motion)
        return env, ego

    def _quantized(self, feat_t: Tensor, feat_tp: Tensor, ego_motion: Tensor
                   ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor, Tensor]:
        """Checked, prepared inputs -> ((env codes, vectors), (ego codes, vectors), feat_t, feat_tp) in eval mode
        without autograd (the prepared features are returned for callers that run the FDM on them)."""
        self._check_inputs(feat_t, feat_tp, ego_motion)
        feat_t, feat_tp, feat_env, ego_motion = self._prepare(feat_t, feat_tp, ego_motion)
        with self._inference():
            env = self.env_vq.quantize(self._env_latents(feat_t, feat_env, ego_motion))
            ego = self.ego_vq.quantize(self._ego_latents(feat_t, feat_tp))
        return env, ego, feat_t, feat_tp

    def latent_vectors(self, feat_t: Tensor, feat_tp: Tensor, ego_motion: Tensor) -> dict[str, Tensor]:
        """Quantised latents {"env": (B, Q, env code_dim), "ego": (B, Q, ego code_dim)}, e.g. for linear probes."""
        (_, env), (_, ego), _, _ = self._quantized(feat_t, feat_tp, ego_motion)
        return {"env": env, "ego": ego}

    def shuffled_recon(self, feat_t: Tensor, feat_tp: Tensor, ego_motion: Tensor, perm: Tensor
                       ) -> dict[str, Tensor]:
        """Stage-2 prediction error with the real latents and with the ego / env latents permuted across the batch
        by ``perm``: how much the reconstruction actually relies on each latent (a diagnostic, not a loss)."""
        (_, env), (_, ego), feat_t, feat_tp = self._quantized(feat_t, feat_tp, ego_motion)
        with self._inference():

            def err(e: Tensor, g: Tensor) -> Tensor:
                return F.mse_loss(self.fdm2(feat_t, [e, g]), feat_tp)

            return {"recon_mse": err(env, ego), "ego_shuffled_mse": err(env, ego[perm]),
                    "env_shuffled_mse": err(env[perm], ego), "copy_mse": F.mse_loss(feat_t, feat_tp)}

    def save(self, path: str | Path) -> None:
        """One safetensors file (written atomically); config, feat_dim, tokens and stage go into its metadata."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {
            "format": FORMAT,
            "config": json.dumps(asdict(self.cfg)),
            "feat_dim": str(self.feat_dim),
            "tokens": str(self.tokens),
            "stage": str(self.stage),
            "layout": self.layout.to_json(),
        }
        from latentvla.runtime.io import atomic_write_bytes

        atomic_write_bytes(Path(path), save(tensors, metadata=meta))  # readers never see a half-written file

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> LatentActionModel:
        """Rebuild a model written by ``save`` (in eval mode, at its saved stage)."""
        from latentvla.runtime.io import weights_metadata

        meta = weights_metadata(path, FORMAT, "train the latent action model: `latentvla lam train`")
        cfg = model_config_from_dict(json.loads(meta["config"]))
        layout = SensorLayout.from_json(meta["layout"]) if "layout" in meta else None  # older files: one sensor
        model = cls(cfg, int(meta["feat_dim"]), int(meta["tokens"]), layout=layout)
        model.load_state_dict(load_file(str(path), device=str(device)))
        model.set_stage(int(meta["stage"]))
        return model.to(device).eval()

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
