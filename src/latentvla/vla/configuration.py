"""Typed configuration of the VLA teacher (one dataclass tree; presets in configs/vla/<profile>.yaml).

The teacher is a Hugging Face vision-language model that reads the front cameras and a fixed prompt (driving command
and ego status, nothing else) and predicts the scene's latent action tokens ``<act_0> .. <act_{K-1}>`` from a LAM
run's label store. Two vision paths share one sequence layout:

- ``vision = "lite0"`` (CPU profiles): the frozen ImageNet EfficientNet-Lite0 stride-32 features of the planner
  cache, average-pooled by ``image_pool`` and projected into the language model by a learned MLP (LLaVA-style);
- ``vision = "native"``: the VLM's own vision tower on the stitched front-camera image (the planner cache's raw
  ``camera`` array, ``features.camera.backbone = none``), for real Qwen2.5-VL weights from ``backbone.path``
  (the ``full`` profile); the tower is frozen unless ``freeze_vision = false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latentvla.config import HASH_OMIT_DEFAULT
from latentvla.planner.configuration import FeatureConfig

FAMILIES = ("qwen2_5_vl", "idefics3")
VISION_MODES = ("lite0", "native")
NATIVE_FAMILIES = ("qwen2_5_vl",)
ACTION_TARGETS = ("ego", "ego+env")


@dataclass
class LoraConfig:
    """LoRA adapters on the language model (peft); ``r = 0`` trains the chosen weights directly."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class BackboneConfig:
    """The VLM. ``path``: a local directory holding pretrained weights (``from_pretrained`` with
    ``local_files_only``; never a hub download). Without it a tiny model of ``family`` is built from the sizes
    below with random weights (or from a ``vla pretrain`` run through ``--init``)."""

    family: str = "qwen2_5_vl"
    path: str | None = None
    vision: str = "lite0"  # lite0 | native
    freeze_vision: bool = True  # native: keep the VLM's vision tower frozen
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    image_pool: list[int] = field(default_factory=lambda: [1, 2])  # lite0: avg-pool (rows, cols) of the s32 grid
    freeze_lm: bool = False  # train only the projector (and action embeddings through LoRA / resize)
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False
    pooled_visual_tokens: int = 4  # encode(): attention-pooled visual embeddings per scene
    # wrap image + prompt in the tokenizer's chat template when it has one (a real Instruct checkpoint's; the
    # tokenizers built in code have none, so this changes nothing on the CPU profiles)
    chat_template: bool = field(default=True, metadata=HASH_OMIT_DEFAULT)


@dataclass
class ActionConfig:
    targets: str = "ego"  # ego | ego+env: which LAM tokens the teacher predicts (ego first)


@dataclass
class TrajectoryHeadConfig:
    """The head that turns the teacher's pooled visual + generated-action embeddings (plus ego status) into a
    trajectory, trained after the teacher with the VLM frozen, so the teacher alone can be scored."""

    hidden: int = 256
    token_dim: int = 16  # each embedding token is normalised and projected to this width
    dropout: float = 0.5  # on the embedding path (the ego path has none)
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64


@dataclass
class PretrainConfig:
    """``vla pretrain``: captioning + VQA on perception facts (vla/facts.py) of a separately generated world."""

    epochs: int = 4
    lr: float = 1e-3
    batch_size: int = 32
    tasks_per_scene: int = 2  # the caption plus this many - 1 questions drawn per scene (seeded)
    action_codes: int = 16  # <act_k> tokens created already (so fine-tuning with this many codes keeps every row)


@dataclass
class VLATrainConfig:
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    epochs: int = 10
    warmup_steps: int = 50
    val_every_epochs: int = 1
    precision: str = "32-true"  # Lightning precision, e.g. bf16-mixed on GPUs
    num_threads: int = 2


def camera_key(cfg: VLAConfig) -> str:
    """The planner feature that carries the images: ``camera_s32`` (lite0) or ``camera`` (native)."""
    return "camera_s32" if cfg.backbone.vision == "lite0" else "camera"


@dataclass
class VLAConfig:
    seed: int = 0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # Planner features the teacher reads (ego_status and camera_s32 for lite0, the raw stitched camera for native):
    # the planner cache is shared with the hosts.
    features: FeatureConfig = field(default_factory=FeatureConfig)
    actions: ActionConfig = field(default_factory=ActionConfig)
    train: VLATrainConfig = field(default_factory=VLATrainConfig)
    trajectory: TrajectoryHeadConfig = field(default_factory=TrajectoryHeadConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    blind: bool = False  # blank images (the "do the images matter?" control of `vla eval`)

    def __post_init__(self) -> None:
        b = self.backbone
        if b.family not in FAMILIES:
            raise ValueError(f"unknown backbone.family '{b.family}'; valid: {list(FAMILIES)}")
        if b.vision not in VISION_MODES:
            raise ValueError(f"unknown backbone.vision '{b.vision}'; valid: {list(VISION_MODES)}")
        if self.actions.targets not in ACTION_TARGETS:
            raise ValueError(f"unknown actions.targets '{self.actions.targets}'; valid: {list(ACTION_TARGETS)}")
        if b.vision == "lite0" and self.features.camera.backbone != "efficientnet-lite0":
            raise ValueError("backbone.vision=lite0 reads EfficientNet-Lite0 features: set "
                             "features.camera.backbone=efficientnet-lite0")
        if b.vision == "native" and self.features.camera.backbone != "none":
            raise ValueError("backbone.vision=native reads the stitched camera image: set features.camera.backbone=none")
        if b.vision == "native" and b.family not in NATIVE_FAMILIES:
            raise ValueError(f"backbone.vision=native is built for {list(NATIVE_FAMILIES)}, not '{b.family}'; use "
                             f"vision=lite0 with this family")
        if len(b.image_pool) != 2 or min(b.image_pool) < 1:
            raise ValueError(f"backbone.image_pool must be two positive ints (rows, cols), got {b.image_pool}")
        if b.hidden_size % b.heads or b.heads % b.kv_heads:
            raise ValueError(f"backbone: hidden_size {b.hidden_size} must divide by heads {b.heads}, and heads "
                             f"by kv_heads {b.kv_heads}")
