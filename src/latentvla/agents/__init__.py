"""Agents behind NAVSIM's contract: ``compute_trajectory(agent_input) -> Trajectory`` (see ``base.py``)."""

from latentvla.agents.base import Agent
from latentvla.agents.registry import AGENT_NAMES, load_agent

__all__ = ["AGENT_NAMES", "Agent", "load_agent"]
