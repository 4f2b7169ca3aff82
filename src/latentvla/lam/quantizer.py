"""Vector quantiser of the latent action model (VQ-VAE / EMA codebook with dead-code restarts), and the tensor
check every LAM module uses on its inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.lam.configuration import QuantizerConfig

_MODES = ("ema", "straight-through")

def check_tensor(name: str, x: object, shape: Sequence[int | None]) -> None:
    """Raise a ValueError naming ``name`` unless ``x`` is a finite float tensor of ``shape`` (None: any size)."""
    want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of shape {want}, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values (expected finite values, shape {want})")


# ---------------------------------------------------------------------------------------------------------------
# Vector quantiser
# ---------------------------------------------------------------------------------------------------------------


class QuantizerOutput(NamedTuple):
    quantized: Tensor  # (B, Q, code_dim), straight-through: gradients flow to the encoder's latents
    codes: Tensor  # (B, Q) long
    loss: Tensor  # scalar: commitment (+ codebook loss in straight-through mode)
    perplexity: Tensor  # scalar, exp(entropy) of this batch's code histogram (1 = collapsed, K = uniform)
    codes_used: Tensor  # scalar long, distinct codes in this batch


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser with EMA or straight-through (VQ-VAE) codebook learning and dead-code restarts.

    Small codebooks (16 codes) collapse easily: a few codes win early and the rest are never chosen again, so
    every ``dead_code_every`` training steps, codes whose EMA usage fell below ``dead_code_threshold`` are moved
    onto random latents of the current batch. The codebook is initialised from the first training batch for the
    same reason (random codes far from the encoder's output would be dead from the start). Restarts draw from
    ``generator`` when given, else from torch's global RNG, so a fixed seed gives identical training.
    """

    def __init__(self, cfg: QuantizerConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if cfg.mode not in _MODES:
            raise ValueError(f"quantizer mode must be one of {_MODES}, got {cfg.mode!r}")
        if cfg.codebook_size < 1 or cfg.code_dim < 1:
            raise ValueError(f"codebook_size and code_dim must be >= 1, got {cfg.codebook_size}, {cfg.code_dim}")
        if not 0.0 <= cfg.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
        self.cfg = cfg
        self.generator = generator
        self.frozen = False
        k, d = cfg.codebook_size, cfg.code_dim
        init = torch.randn(k, d)
        if cfg.mode == "ema":  # codes are running means of their assigned latents: no gradient
            self.register_buffer("embed", init)
        else:
            self.embed = nn.Parameter(init)
        self.register_buffer("embed_sum", init.clone())  # EMA of sum of assigned latents (ema mode)
        self.register_buffer("usage", torch.ones(k))  # EMA of per-batch assignment counts (both modes)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def codebook(self) -> Tensor:
        return self.embed

    @property
    def updating(self) -> bool:
        """Whether a forward pass may change the codebook (training mode and not frozen)."""
        return self.training and not self.frozen

    def freeze(self) -> None:
        """Stop every codebook change (EMA, restarts, gradients): stage 2 must keep stage 1's codebook exactly."""
        self.frozen = True
        self.requires_grad_(False)

    def unfreeze(self) -> None:
        self.frozen = False
        if isinstance(self.embed, nn.Parameter):
            self.embed.requires_grad_(True)

    @torch.no_grad()
    def init_codebook(self, vectors: Tensor) -> None:
        """Set the codebook explicitly (K, code_dim) and mark it initialised (no data-dependent init)."""
        check_tensor("vectors", vectors, (self.cfg.codebook_size, self.cfg.code_dim))
        self.embed.copy_(vectors)
        self.usage.fill_(1.0)
        self.embed_sum.copy_(vectors)
        self.initialized.fill_(True)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code per latent, no side effects: (codes (B, Q) long, code vectors (B, Q, code_dim))."""
        flat = z.reshape(-1, z.shape[-1]).float()
        emb = self.embed.float()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ emb.t() + emb.pow(2).sum(1)[None]
        codes = dist.argmin(1).view(z.shape[:-1])
        return codes, F.embedding(codes, self.embed).to(z.dtype)

    def forward(self, z: Tensor) -> QuantizerOutput:
        check_tensor("latents", z, (None, None, self.cfg.code_dim))
        if self.updating and not bool(self.initialized):
            self._restart(z.detach(), torch.ones(self.cfg.codebook_size, dtype=torch.bool, device=z.device))
            self.initialized.fill_(True)
        codes, q = self.quantize(z)
        commit = F.mse_loss(z, q.detach())
        loss = self.cfg.commitment * commit
        if self.cfg.mode == "straight-through":
            loss = loss + F.mse_loss(q, z.detach())  # pulls codes towards the encoder's latents
        counts = torch.bincount(codes.flatten(), minlength=self.cfg.codebook_size).float()
        if self.updating:
            self._update(z.detach(), codes, counts)
        probs = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(probs * probs.clamp_min(1e-12).log()).sum())
        quantized = z + (q - z).detach()  # straight-through estimator
        return QuantizerOutput(quantized, codes, loss, perplexity, (counts > 0).sum())

    @torch.no_grad()
    def _update(self, z: Tensor, codes: Tensor, counts: Tensor) -> None:
        """EMA usage (and, in ema mode, EMA codebook) update, then a dead-code restart when due."""
        decay = self.cfg.ema_decay
        flat = z.reshape(-1, z.shape[-1]).float()
        self.usage.mul_(decay).add_(counts, alpha=1 - decay)
        if self.cfg.mode == "ema":
            onehot = F.one_hot(codes.flatten(), self.cfg.codebook_size).float()
            self.embed_sum.mul_(decay).add_(onehot.t() @ flat, alpha=1 - decay)
            # Laplace smoothing keeps rarely used codes from dividing by ~0.
            n, k, eps = self.usage.sum(), self.cfg.codebook_size, 1e-5
            smoothed = (self.usage + eps) / (n + k * eps) * n
            self.embed.copy_(self.embed_sum / smoothed[:, None])
        self.steps += 1
        every = self.cfg.dead_code_every
        if every > 0 and int(self.steps) % every == 0:
            self._restart(z, self.usage < self.cfg.dead_code_threshold)

    @torch.no_grad()
    def _restart(self, z: Tensor, dead: Tensor) -> None:
        """Move ``dead`` codes onto random latents of the batch and give them a fair share of usage."""
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        flat = z.reshape(-1, z.shape[-1]).float()
        n = flat.shape[0]
        if n >= n_dead:
            idx = torch.randperm(n, generator=self.generator)[:n_dead]
        else:
            idx = torch.randint(n, (n_dead,), generator=self.generator)
        new = flat[idx.to(flat.device)].to(self.embed.dtype)
        fair = float(self.usage.sum()) / self.cfg.codebook_size
        self.embed[dead] = new
        self.usage[dead] = max(fair, 1.0, self.cfg.dead_code_threshold)
        self.embed_sum[dead] = new * self.usage[dead][:, None]
