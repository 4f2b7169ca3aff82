"""Resolve ``--agent NAME_OR_RUN_DIR`` to an Agent; unknown names list the valid ones."""

from __future__ import annotations

from pathlib import Path

from latentvla.agents.base import Agent

AGENT_NAMES = ("constant-velocity", "log-replay", "pdm-closed", "predictions:FILE.json")


def load_agent(spec: str) -> Agent:
    from latentvla.agents import baselines

    builtin = {
        "constant-velocity": baselines.ConstantVelocityAgent,
        "log-replay": baselines.LogReplayAgent,
        "pdm-closed": baselines.PDMClosedAgent,
    }
    if spec in builtin:
        return builtin[spec]()
    if spec.startswith("predictions:"):
        return baselines.PredictionsAgent(spec.split(":", 1)[1])
    path = Path(spec)
    if path.is_dir():
        if (path / "config.yaml").is_file():
            raise ValueError(f"{path} is a run directory, but no trained-agent stage that can load it is built yet; "
                             f"export its trajectories and score them with --agent predictions:FILE.json")
        raise ValueError(f"{path} is a directory but not a run directory (no config.yaml)")
    raise ValueError(f"unknown agent '{spec}'; valid agents: {', '.join(AGENT_NAMES)} or a run directory")
