"""Datasets: the scene store (reading generated or converted data) and torch datasets over it."""

from latentvla.data.store import DataError, SceneStore, verify_dataset

__all__ = ["DataError", "SceneStore", "verify_dataset"]
