"""The VLA teacher: a Hugging Face VLM that reads camera features and the ego prompt and predicts latent actions.

``VLMAdapter`` hides each HF family's attribute names (where its language model and vision tower live, how a tiny
config is built), so the teacher only needs ``language_model``, the token embeddings and the LM head; adding a
family is one small subclass. The CPU vision path is LLaVA-style: the frozen EfficientNet-Lite0 stride-32 map,
average-pooled, plus a learned position per grid cell, goes through a two-layer MLP projector into the image
placeholder positions of the sequence (the family's own vision tower is dropped).

Inference never reads labels: ``generate`` decodes the action tokens greedily (restricted to ``<act_*>``) with a
KV cache, and ``encode`` runs one teacher-forced pass over the teacher's **own** tokens to return the
attention-pooled visual embeddings, the hidden states of the generated actions and the per-position distributions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentvla.planner.features import S32_CHANNELS
from latentvla.planner.modeling import EGO_DIM, NUM_POSES, POSE_DIM, bounded_poses
from latentvla.vla.configuration import BackboneConfig, VLAConfig, camera_key
from latentvla.vla.processor import VLAProcessor, Vocab

# The tiny configs' default special ids point into the real vocabularies; the teacher's tokenizer owns them.
NO_SPECIAL_IDS = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}


class VLMAdapter:
    """One HF VLM family. Subclasses name the model class, the tiny config and the submodules."""

    family: str = ""
    # True: the family's language model was pretrained with multimodal (t, h, w) rotary positions on the tokens of
    # its own tower (Qwen2-VL's M-RoPE), so the native path must lay them out the same way
    mrope: bool = False

    def model_class(self):
        raise NotImplementedError

    def tiny_config(self, b: BackboneConfig, vocab_size: int):
        raise NotImplementedError

    def language_model(self, model) -> nn.Module:
        raise NotImplementedError

    def drop_vision(self, model) -> None:
        """Remove the family's vision tower (the lite0 path feeds projected features instead)."""
        raise NotImplementedError

    # native vision (the family's own tower on the stitched camera image); families without it refuse clearly
    def native_processor(self, image_size: tuple[int, int]):
        raise ValueError(f"native vision is not built for the {self.family} family; use backbone.vision=lite0")

    def native_grid(self, processor, image_size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the image tokens the tower gives for one ``image_size`` image."""
        raise ValueError(f"native vision is not built for the {self.family} family")

    def native_features(self, model, processor, images: np.ndarray) -> Tensor:
        raise ValueError(f"native vision is not built for the {self.family} family")

    def vision_tower(self, model) -> nn.Module:
        raise ValueError(f"native vision is not built for the {self.family} family")

    def build(self, b: BackboneConfig, vocab_size: int, hf_config: dict | None = None):
        """The VLM: from a saved run's architecture ``hf_config`` (its weights come from the run), from the
        pretrained weights in ``b.path``, or tiny and random from ``b``'s sizes."""
        cls = self.model_class()
        if hf_config is not None:
            return cls(cls.config_class.from_dict(hf_config))
        if b.path:
            from pathlib import Path

            if not Path(b.path).is_dir():
                raise FileNotFoundError(f"backbone.path {b.path} is not a directory; pass a local copy of the "
                                        f"weights (nothing is downloaded)")
            model = cls.from_pretrained(b.path, local_files_only=True, dtype=torch.float32)
        else:
            model = cls(self.tiny_config(b, vocab_size))
        return model


class Qwen25VLAdapter(VLMAdapter):
    family = "qwen2_5_vl"
    mrope = True

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def tiny_config(self, b: BackboneConfig, vocab_size: int):
        from transformers import Qwen2_5_VLConfig

        head_dim = b.hidden_size // b.heads
        quarter = head_dim // 4  # M-RoPE sections (t, h, w) must sum to head_dim / 2
        text = dict(vocab_size=vocab_size, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
                    num_hidden_layers=b.layers, num_attention_heads=b.heads, num_key_value_heads=b.kv_heads,
                    max_position_embeddings=1024, tie_word_embeddings=False, **NO_SPECIAL_IDS,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                     "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]})
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=b.hidden_size,
                      fullatt_block_indexes=[0])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **NO_SPECIAL_IDS)

    def language_model(self, model) -> nn.Module:
        return model.model.language_model

    def drop_vision(self, model) -> None:
        model.model.visual = None

    def native_processor(self, image_size: tuple[int, int]):
        """The PIL image processor (no torchvision), pinned to one pixel count so every image gives the same
        number of tokens."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        pixels = int(image_size[0] * image_size[1])
        return Qwen2VLImageProcessorPil(min_pixels=pixels, max_pixels=pixels)

    def native_grid(self, processor, image_size: tuple[int, int]) -> tuple[int, int]:
        _, rows, cols = processor(images=[np.zeros((*image_size, 3), np.uint8)],
                                  return_tensors="pt")["image_grid_thw"][0].tolist()
        return rows // processor.merge_size, cols // processor.merge_size

    def native_features(self, model, processor, images: np.ndarray) -> Tensor:
        device = model.get_input_embeddings().weight.device
        px = processor(images=list(images), return_tensors="pt")
        tower = self.vision_tower(model)
        dtype = next(tower.parameters()).dtype
        out = model.model.get_image_features(px["pixel_values"].to(device, dtype), px["image_grid_thw"].to(device))
        return torch.stack(list(out.pooler_output))

    def vision_tower(self, model) -> nn.Module:
        return model.model.visual


class Idefics3Adapter(VLMAdapter):
    """SmolVLM / Idefics3 (SigLIP vision, Llama language model)."""

    family = "idefics3"

    def model_class(self):
        from transformers import Idefics3ForConditionalGeneration

        return Idefics3ForConditionalGeneration

    def tiny_config(self, b: BackboneConfig, vocab_size: int):
        from transformers import Idefics3Config

        text = dict(vocab_size=vocab_size, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
                    num_hidden_layers=b.layers, num_attention_heads=b.heads, num_key_value_heads=b.kv_heads,
                    max_position_embeddings=1024, tie_word_embeddings=False, **NO_SPECIAL_IDS)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=32, patch_size=16)
        return Idefics3Config(text_config=text, vision_config=vision, scale_factor=1)

    def language_model(self, model) -> nn.Module:
        return model.model.text_model

    def drop_vision(self, model) -> None:
        model.model.vision_model = None
        model.model.connector = None


ADAPTERS: dict[str, VLMAdapter] = {a.family: a for a in (Qwen25VLAdapter(), Idefics3Adapter())}


def mrope_positions(input_ids: Tensor, mask: Tensor, image_id: int, grid: tuple[int, int]) -> Tensor:
    """(3, B, L) Qwen2-VL multimodal rotary positions of left-padded rows holding one image of ``grid`` (rows,
    cols) tokens: text counts up on all three axes; the image's tokens sit at (a, a + row, a + col), with ``a`` the
    index of its first token; the text after it resumes at ``a + max(rows, cols)``. Padding stays at 0."""
    rows, cols = grid
    n = rows * cols
    out = torch.zeros(3, *input_ids.shape, dtype=torch.long, device=input_ids.device)
    r = torch.arange(rows, device=input_ids.device).repeat_interleave(cols)
    c = torch.arange(cols, device=input_ids.device).repeat(rows)
    for b in range(len(input_ids)):
        keep = mask[b].bool()
        image = (input_ids[b, keep] == image_id).nonzero().flatten()
        idx = torch.arange(int(keep.sum()), device=input_ids.device)
        if len(image) == 0:
            out[:, b, keep] = idx
            continue
        a = int(image[0])
        if len(image) != n or int(image[-1]) != a + n - 1:
            raise ValueError(f"row {b} must hold one block of {n} contiguous image tokens for M-RoPE positions, "
                             f"got {len(image)}")
        pos = torch.where(idx < a, idx, idx - n + max(rows, cols)).expand(3, -1).clone()
        pos[0, a:a + n], pos[1, a:a + n], pos[2, a:a + n] = a, a + r, a + c
        out[:, b, keep] = pos
    return out


def pooled_grid(features_shape: tuple[int, int], pool: list[int]) -> tuple[int, int]:
    """Grid (rows, cols) of the stride-32 camera map after ``image_pool`` average pooling (ceil mode)."""
    return math.ceil(features_shape[0] / pool[0]), math.ceil(features_shape[1] / pool[1])


class LatentVLATeacher(nn.Module):
    """Teacher on planner features ``{"ego_status": (B, 8), "camera_s32": (B, 320, h, w)}`` (lite0) or
    ``{"ego_status", "camera": (B, 3, H, W) uint8}`` (native).

    ``forward(features, actions)`` -> logits (B, N, V) of the N action positions (teacher forcing);
    ``generate(features)`` -> codes (B, N); ``encode(features)`` -> embeddings (B, P + N, D), probs (B, N, K),
    codes (B, N)."""

    def __init__(self, cfg: VLAConfig, tokenizer, vocab: Vocab, num_positions: int,
                 camera_grid: tuple[int, int], hf_config: dict | None = None) -> None:
        super().__init__()
        b = cfg.backbone
        self.cfg, self.num_positions, self.camera_grid = cfg, num_positions, tuple(camera_grid)
        self.adapter = ADAPTERS[b.family]
        self.native = b.vision == "native"
        self.camera_key = camera_key(cfg)
        if self.native:  # the family's own tower on the stitched (H, W) image
            self.image_processor = self.adapter.native_processor(self.camera_grid)
            self.grid = None
            self.image_grid = self.adapter.native_grid(self.image_processor, self.camera_grid)
            num_image_tokens = self.image_grid[0] * self.image_grid[1]
        else:  # lite0: pooled stride-32 EfficientNet features through a projector
            self.grid = pooled_grid(camera_grid, b.image_pool)
            num_image_tokens = self.grid[0] * self.grid[1]
        self.processor = VLAProcessor(tokenizer, vocab, num_image_tokens, b.chat_template)
        self.vlm = self.adapter.build(b, len(tokenizer), hf_config)
        if not self.native:
            self.adapter.drop_vision(self.vlm)
        if self.vlm.get_input_embeddings().num_embeddings != len(tokenizer):
            self.vlm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        hidden = self.vlm.get_input_embeddings().embedding_dim
        self.hidden_size = hidden
        if not self.native:
            self.projector = nn.Sequential(nn.Linear(S32_CHANNELS, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            self.image_pos = nn.Parameter(torch.zeros(1, num_image_tokens, hidden))
        self.pool_queries = nn.Parameter(torch.randn(1, b.pooled_visual_tokens, hidden) * 0.02)
        self.pool_attn = nn.MultiheadAttention(hidden, max(1, b.heads), batch_first=True)
        self.register_buffer("action_ids", torch.tensor(vocab.actions, dtype=torch.long), persistent=False)
        # trajectory head: an EgoStatusMLP-like ego path plus a context path over the teacher's embeddings
        # (pooled visual + generated actions), each token normalised and squeezed to ``token_dim``, with dropout:
        # without it the head leans on tokens that are sharper on train scenes than on new ones
        t = cfg.trajectory
        self.traj_ego = nn.Sequential(nn.Linear(EGO_DIM, t.hidden), nn.ReLU(), nn.Linear(t.hidden, t.hidden), nn.ReLU())
        self.traj_norm = nn.LayerNorm(hidden)
        self.traj_proj = nn.Linear(hidden, t.token_dim)
        self.traj_ctx = nn.Sequential(nn.Dropout(t.dropout), nn.Linear((b.pooled_visual_tokens + num_positions)
                                                                       * t.token_dim, t.hidden),
                                      nn.ReLU(), nn.Dropout(t.dropout))
        self.traj_out = nn.Sequential(nn.Linear(2 * t.hidden, t.hidden), nn.ReLU(),
                                      nn.Linear(t.hidden, NUM_POSES * POSE_DIM))
        self.register_buffer("ego_mean", torch.zeros(EGO_DIM))
        self.register_buffer("ego_std", torch.ones(EGO_DIM))
        self._apply_training_switches(b)

    @torch.no_grad()
    def reset_head(self, seed: int) -> None:
        """Fresh weights for the pooling and the trajectory head (the head phase never inherits a previous fit:
        a pooler shaped by another head made the new one overfit, val ADE 0.66 m instead of 0.59 m)."""
        torch.manual_seed(seed)
        self.pool_queries.copy_(torch.randn_like(self.pool_queries) * 0.02)
        self.pool_attn._reset_parameters()
        for module in (self.traj_ego, self.traj_norm, self.traj_proj, self.traj_ctx, self.traj_out):
            for layer in module.modules():
                if isinstance(layer, (nn.Linear, nn.LayerNorm)):
                    layer.reset_parameters()

    # --- set-up -------------------------------------------------------------------------------------------
    @property
    def lm(self) -> nn.Module:
        return self.adapter.language_model(self.vlm)

    @property
    def vocab(self) -> Vocab:
        return self.processor.vocab

    def _apply_training_switches(self, b: BackboneConfig) -> None:
        if b.lora.r > 0:
            from peft import LoraConfig, inject_adapter_in_model

            inject_adapter_in_model(LoraConfig(r=b.lora.r, lora_alpha=b.lora.alpha, lora_dropout=b.lora.dropout,
                                               target_modules=list(b.lora.target_modules)), self.lm)
        if b.lora.r > 0 or b.freeze_lm:
            embed = self.vlm.get_input_embeddings()
            for name, p in self.lm.named_parameters():
                if "lora_" not in name and p is not embed.weight:
                    p.requires_grad_(False)
        if self.native and b.freeze_vision:
            self.adapter.vision_tower(self.vlm).requires_grad_(False)
        if b.gradient_checkpointing:
            self.vlm.gradient_checkpointing_enable()

    # --- pieces -------------------------------------------------------------------------------------------
    def image_embeds(self, camera: Tensor) -> Tensor:
        """(B, T, D) image tokens from (B, 320, h, w) frozen features (lite0) or a (B, 3, H, W) uint8 stitched
        image (native); blank input when ``cfg.blind``."""
        if self.native:
            if camera.ndim != 4 or camera.shape[1] != 3 or tuple(camera.shape[2:]) != self.camera_grid:
                raise ValueError(f"camera must be (B, 3, {self.camera_grid[0]}, {self.camera_grid[1]}) uint8 for "
                                 f"this teacher, got {tuple(camera.shape)}")
            images = camera.permute(0, 2, 3, 1).cpu().numpy().astype(np.uint8)
            if self.cfg.blind:
                images = np.zeros_like(images)
            return self.adapter.native_features(self.vlm, self.image_processor, images)
        if camera.ndim != 4 or camera.shape[1] != S32_CHANNELS:
            raise ValueError(f"camera_s32 must be (B, {S32_CHANNELS}, h, w), got {tuple(camera.shape)}")
        x = camera.float()
        if self.cfg.blind:
            x = torch.zeros_like(x)
        pool = self.cfg.backbone.image_pool
        x = F.avg_pool2d(x, kernel_size=pool, stride=pool, ceil_mode=True)
        if tuple(x.shape[2:]) != self.grid:
            raise ValueError(f"camera_s32 grid {tuple(camera.shape[2:])} pools to {tuple(x.shape[2:])}, but the "
                             f"teacher was built for {self.grid}; use the features config it was trained with")
        return self.projector(x.flatten(2).transpose(1, 2)) + self.image_pos

    def embed_inputs(self, input_ids: Tensor, camera: Tensor) -> Tensor:
        embeds = self.vlm.get_input_embeddings()(input_ids)
        image = input_ids == self.vocab.image
        n = self.processor.num_image_tokens
        if not torch.equal(image.sum(1), torch.full((len(input_ids),), n, device=image.device)):
            raise ValueError(f"every sequence must hold exactly {n} image placeholders")
        out = embeds.clone()
        out[image] = self.image_embeds(camera).reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        return out

    def run_lm(self, embeds: Tensor, mask: Tensor, positions: Tensor, cache=None) -> Tensor:
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=cache is not None)
        return out.last_hidden_state

    def inputs(self, features: dict[str, Tensor], actions: Tensor | None = None) -> dict[str, Tensor]:
        ego = features["ego_status"].detach().cpu().numpy()
        batch = self.processor(ego, None if actions is None else actions.detach().cpu().numpy())
        device = features[self.camera_key].device
        return {k: v.to(device) for k, v in batch.items()}

    # --- training -----------------------------------------------------------------------------------------
    def forward(self, features: dict[str, Tensor], actions: Tensor) -> dict[str, Tensor]:
        """Teacher forcing on ``actions`` (B, N) codes: logits (B, N, V) that predict each action token and the
        last hidden states (B, L, D)."""
        batch = self.inputs(features, actions)
        hidden = self.hidden_of(batch["input_ids"], batch["attention_mask"], features[self.camera_key])
        n = actions.shape[1]
        logits = self.vlm.lm_head(hidden[:, -n - 1:-1])
        return {"logits": logits, "hidden": hidden, "input_ids": batch["input_ids"]}

    def positions(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """Rotary positions of a left-padded batch: (B, L), or (3, B, L) multimodal (t, h, w) ones when the
        family's own tower made the image tokens and its language model expects them (Qwen2.5-VL's M-RoPE: what
        real pretrained weights know). The lite0 tokens come through a fresh projector and keep 1-D positions."""
        if self.native and self.adapter.mrope:
            return mrope_positions(input_ids, mask, self.vocab.image, self.image_grid)
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def hidden_of(self, input_ids: Tensor, mask: Tensor, camera: Tensor, cache=None,
                  positions: Tensor | None = None) -> Tensor:
        """Last hidden states (B, L, D) of a left-padded sequence whose image placeholders take ``camera``
        (filling ``cache`` when given, for decoding after it)."""
        positions = self.positions(input_ids, mask) if positions is None else positions
        return self.run_lm(self.embed_inputs(input_ids, camera), mask, positions, cache)

    def loss(self, logits: Tensor, actions: Tensor) -> Tensor:
        """Next-token NLL of the action tokens only (full vocabulary, as in LM fine-tuning)."""
        target = self.action_ids[actions]
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())

    def action_logits(self, logits: Tensor) -> Tensor:
        """(..., V) -> (..., K): the logits of the K action tokens, in code order."""
        return logits.index_select(-1, self.action_ids)

    # --- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, features: dict[str, Tensor]) -> Tensor:
        """Greedy decoding of ``num_positions`` action tokens (restricted to ``<act_*>``), KV-cached: (B, N)."""
        from transformers import DynamicCache

        batch = self.inputs(features)
        mask = batch["attention_mask"]
        cache = DynamicCache()
        positions = self.positions(batch["input_ids"], mask)
        hidden = self.hidden_of(batch["input_ids"], mask, features[self.camera_key], cache, positions)
        codes = []
        # position of each row's last prompt token (text: the same on every M-RoPE axis); each new token is +1
        last = (positions[0] if positions.ndim == 3 else positions)[:, -1:]
        embed = self.vlm.get_input_embeddings()
        for step in range(self.num_positions):
            code = self.action_logits(self.vlm.lm_head(hidden[:, -1])).argmax(-1)
            codes.append(code)
            if step + 1 == self.num_positions:
                break  # the last token's own hidden state is not needed here
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            last = last + 1
            hidden = self.run_lm(embed(self.action_ids[code])[:, None], mask, last, cache)
        return torch.stack(codes, dim=1)

    @torch.no_grad()
    def hidden_states(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """The frozen teacher's part of ``encode``: its own greedy tokens ``codes`` (B, N), ``probs`` (B, N, K),
        the last hidden states at the image positions ``visual`` (B, T, D) and at the generated action
        positions ``actions`` (B, N, D)."""
        codes = self.generate(features)
        out = self.forward(features, codes)
        hidden, n = out["hidden"], codes.shape[1]
        image = out["input_ids"] == self.vocab.image
        return {"codes": codes, "probs": self.action_logits(out["logits"]).float().softmax(-1),
                "visual": hidden[image].view(len(hidden), self.processor.num_image_tokens, -1),
                "actions": hidden[:, -n:]}

    def embeddings(self, visual: Tensor, actions: Tensor) -> Tensor:
        """(B, P + N, D): P attention-pooled visual tokens, then the N generated-action hidden states."""
        q = self.pool_queries.expand(len(visual), -1, -1).to(visual.dtype)
        pooled, _ = self.pool_attn(q, visual, visual, need_weights=False)
        return torch.cat([pooled, actions], dim=1)

    def trajectory(self, embeddings: Tensor, ego_status: Tensor) -> Tensor:
        """Embeddings (B, P + N, D) + ego status (B, 8) -> (B, 8, 3) poses (the teacher as a planner)."""
        ego = self.traj_ego((ego_status.float() - self.ego_mean) / self.ego_std)
        ctx = self.traj_ctx(self.traj_proj(self.traj_norm(embeddings.float())).flatten(1))
        raw = self.traj_out(torch.cat([ego, ctx], dim=-1))
        return bounded_poses(raw.view(len(raw), NUM_POSES, POSE_DIM))

    def encode(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """What the planner consumes, from the teacher's **own** tokens (never labels): ``embeddings``
        (B, P + N, D), ``probs`` (B, N, K) per-position distributions over the codes, ``codes`` (B, N)."""
        h = self.hidden_states(features)
        return {"embeddings": self.embeddings(h["visual"], h["actions"]), "probs": h["probs"], "codes": h["codes"]}

    @torch.no_grad()
    def plan(self, features: dict[str, Tensor]) -> Tensor:
        """(B, 8, 3) trajectory decoded from the generated tokens and the ego status."""
        return self.trajectory(self.encode(features)["embeddings"], features["ego_status"])
