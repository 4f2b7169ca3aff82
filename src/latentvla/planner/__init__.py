"""Planner hosts (TransFuser, iPad, ego MLP): NAVSIM-style features from the AgentInput only, privileged targets
from the Scene, an on-disk feature/target cache, the models and their training loop."""
