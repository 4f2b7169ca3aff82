"""``latentvla data doctor --data navsim:SPLIT``: what the NAVSIM reader resolves, and what is missing.

NAVSIM users lost scenes silently to partial downloads (a log without its sensor blobs, a filter naming logs that
are not on disk). The doctor prints every resolved path, the scenes found against the filter's token list and
the official split size, the maps the logs need, and every sensor file a frame references but the disk lacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from latentvla.data.navsim_source import OFFICIAL_SPLITS, NavsimSource, cache_home
from latentvla.data.nuplan_gpkg import read_index
from latentvla.data.store import DataError

ENV_VARS = ("OPENSCENE_DATA_ROOT", "NUPLAN_MAPS_ROOT", "NAVSIM_DEVKIT_ROOT", "NAVSIM_EXP_ROOT")


def _env() -> dict:
    out = {}
    for var in ENV_VARS:
        val = os.environ.get(var)
        out[var] = {"value": val, "exists": bool(val) and Path(val).expanduser().exists()}
    out["cache_home"] = {"value": str(cache_home()), "exists": cache_home().exists()}
    return out


def diagnose(spec: str, check_sensors: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """A JSON-able report; ``problems`` lists each thing that loses scenes or stops a command (empty: healthy)."""
    report: dict = {"data": spec, "env": _env(), "splits": [], "maps": {}, "missing_sensor_files": [],
                    "problems": []}
    try:
        src = NavsimSource(spec, verify_blobs=False, quiet=progress is None)
    except DataError as e:
        report["problems"].append(str(e))
        return report
    if src.maps_root is None:
        report["problems"].append("NUPLAN_MAPS_ROOT is not set: scoring and map-based agents need the nuPlan maps")
    by_split: dict[str, list[str]] = {}
    for log, entry in src.index["logs"].items():
        by_split.setdefault(entry["split"], []).append(log)
    roles: dict[str, int] = {}
    for s in src.manifest["scenes"]:
        roles[s["split"]] = roles.get(s["split"], 0) + 1
    for split in src.splits:
        logs = by_split.get(split.name, [])
        found = [t for lg in logs for t, *_ in src.index["logs"][lg]["scenes"]]
        row = {"name": split.name, "role": split.role, "log_dir": str(src.root / "navsim_logs" / split.log_dir),
               "sensor_dir": str(src.root / "sensor_blobs" / split.log_dir),
               "scene_filter": str(split.filter_path) if split.filter_path else None,
               "logs_found": len(logs), "scenes_found": len(found)}
        wanted_logs = list(split.filter.get("log_names") or [])
        if wanted_logs:
            missing = sorted(set(wanted_logs) - set(logs))
            row.update(logs_expected=len(wanted_logs), logs_missing=missing)
            if missing:
                report["problems"].append(f"split {split.name}: {len(missing)} of {len(wanted_logs)} logs of the "
                                          f"scene filter are not in {row['log_dir']} (first: {missing[0]})")
        tokens = list(split.filter.get("tokens") or [])
        if tokens:
            lost = len(set(tokens) - set(found))
            row.update(scenes_expected=len(tokens), scenes_missing=lost)
            if lost:
                report["problems"].append(f"split {split.name}: {lost} of {len(tokens)} scene tokens of the filter "
                                          f"were not found in the logs")
        if split.name in OFFICIAL_SPLITS:
            row["official_scenes"] = OFFICIAL_SPLITS[split.name][1]
            if len(found) != row["official_scenes"]:
                report["problems"].append(f"split {split.name}: {len(found)} scenes found, the official split has "
                                          f"{row['official_scenes']}")
        report["splits"].append(row)
    report["roles"] = roles
    index: dict = {}
    if src.maps_root is not None:
        try:
            index = read_index(src.maps_root)
        except DataError as e:
            report["problems"].append(str(e))
    names = sorted({src._log(lg)["map_name"] for lg in src.index["logs"]}) if check_sensors else []
    for name in names:
        present = bool(src.maps_root) and (src.maps_root / name).is_dir()
        report["maps"][name] = {"present": present, "in_index": name in index}
        if src.maps_root is not None and not present:
            report["problems"].append(f"map {name} (used by the logs) is not in {src.maps_root}")
    if check_sensors:
        missing = src.missing_sensor_files(progress)
        report["missing_sensor_files"] = missing
        if missing:
            report["problems"].append(f"{len(missing)} sensor files are missing (first: {missing[0]})")
    return report
