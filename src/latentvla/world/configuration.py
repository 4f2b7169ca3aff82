"""Typed configuration of the embedded world generator (profiles in ``latentvla/configs/world/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from latentvla.world.families import FAMILIES, LONG_TAIL
from latentvla.world.sensors import SensorConfig

SPLITS: tuple[str, ...] = ("train", "val", "test")


def _train_weights() -> dict[str, float]:
    # Long-tail families stay rare in training (as in real driving logs); cruise dominates.
    return {"cruise": 5.0, **{f: 0.6 for f in LONG_TAIL}}


def _balanced() -> dict[str, float]:
    return {f: 1.0 for f in FAMILIES}


@dataclass
class WorldConfig:
    seed: int = 0
    scenes: int = 2000
    log_seconds: float = 16.0  # sensor frames per log = 2 * log_seconds (2 Hz)
    warmup_seconds: float = 1.0  # simulated before the first logged frame
    stride: int = 1  # frames between consecutive scene windows (NAVSIM navtrain/navtest: 1)
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "val": 0.1, "test": 0.3})
    family_weights: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"train": _train_weights(), "val": _balanced(), "test": _balanced()})
    unknown_command_rate: float = 0.02  # fraction of logs whose driving command is 'unknown'
    annotation_radius: float = 100.0  # boxes of road users within this distance of the ego are annotated
    max_attempts: int = 25  # re-draws of a log whose expert would collide or leave the road
    sensors: SensorConfig = field(default_factory=SensorConfig)

    def validate(self) -> None:
        if self.scenes < 1:
            raise ValueError(f"scenes must be >= 1, got {self.scenes}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.log_seconds * 2 < 14:
            raise ValueError(f"log_seconds must be >= 7 (a scene is 14 frames at 2 Hz), got {self.log_seconds}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad:
            raise ValueError(f"unknown split(s) {bad}; valid splits: {list(SPLITS)}")
        if any(v < 0 for v in self.splits.values()) or sum(self.splits.values()) <= 0:
            raise ValueError(f"split proportions must be >= 0 with a positive sum, got {self.splits}")
        for split, weights in self.family_weights.items():
            if split not in SPLITS:
                raise ValueError(f"family_weights: unknown split '{split}'; valid splits: {list(SPLITS)}")
            unknown = [f for f in weights if f not in FAMILIES]
            if unknown:
                raise ValueError(f"family_weights.{split}: unknown family {unknown}; valid families: {list(FAMILIES)}")
            if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"family_weights.{split}: weights must be >= 0 with a positive sum")
        if not 0.0 <= self.unknown_command_rate <= 1.0:
            raise ValueError("unknown_command_rate must be within [0, 1]")
        self.sensors.validate()

    @property
    def frames_per_log(self) -> int:
        return int(round(self.log_seconds * 2))

    @property
    def scenes_per_log(self) -> int:
        return (self.frames_per_log - 14) // self.stride + 1
