"""LatentVLA: latent-action VLA teacher, end-to-end planner and distilled student for autonomous driving."""

__version__ = "0.1.0"
