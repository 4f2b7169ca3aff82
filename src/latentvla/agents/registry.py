"""Resolve ``--agent NAME_OR_RUN_DIR`` to an Agent; unknown names list the valid ones."""

from __future__ import annotations

from pathlib import Path

from latentvla.agents.base import Agent

AGENT_NAMES = ("constant-velocity", "log-replay", "pdm-closed", "predictions:FILE.json", "PLANNER_RUN_DIR",
               "VLA_RUN_DIR")


def _run_stage(path: Path) -> str:
    from latentvla.runtime.io import read_json

    run_json = path / "run.json"
    return str(read_json(run_json).get("stage", "unknown")) if run_json.is_file() else "unknown"


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
            stage = _run_stage(path)
            if stage == "planner":
                from latentvla.planner.agent import PlannerAgent

                return PlannerAgent(path)
            if stage == "vla":
                from latentvla.vla.agent import TeacherAgent

                return TeacherAgent(path)
            raise ValueError(f"{path} is a '{stage}' run directory, which is not an agent; pass a planner run "
                             f"(`latentvla planner train`), a teacher run (`latentvla vla train`) or score exported trajectories with "
                             f"--agent predictions:FILE.json")
        raise ValueError(f"{path} is a directory but not a run directory (no config.yaml)")
    raise ValueError(f"unknown agent '{spec}'; valid agents: {', '.join(AGENT_NAMES)} or a run directory")
