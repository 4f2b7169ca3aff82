"""Find the artifacts of ``latentvla report --runs PATH...``: run directories, ``experiment table`` / ``demo`` output
directories, scoring summaries and closed-loop results, read once into typed records.

A PATH may be a run directory itself (``run.json``) or any directory holding runs below it (a demo or experiment
output: ``lam/``, ``vla/*``, ``planner/*``, ``ablations/*/*``); datasets, caches and checkpoints are not searched.
A PATH that does not exist or holds nothing recognised raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from latentvla.runtime.io import read_json

SEARCH_DEPTH = 4  # ablations/<name>/<model>/ and vla/teacher/blind/ are 3 levels below an experiment directory
SKIP_DIRS = {"checkpoints", "tokenizer", "labels", "report", "scores", "eval", "gallery", "logs", "shards", "blobs"}
CLOSED_LOOP_GLOB = "closed_loop*.json"
RECOGNISED = ("a run directory (run.json)", "an `experiment table` or `demo` output (table.json, demo.json)",
              "scoring summaries (*.summary.json)", f"closed-loop results ({CLOSED_LOOP_GLOB})")


@dataclass
class Run:
    """One training run directory (``run.json`` + ``config.yaml`` + ``metrics.json``)."""

    path: Path
    name: str  # relative to the PATH it was found under (``planner/full``), or the directory's name
    stage: str  # lam | vla | vla-pretrain | planner | unknown
    info: dict
    metrics: dict
    config_text: str

    @property
    def manifest_digest(self) -> str | None:
        return ((self.info.get("provenance") or {}).get("inputs") or {}).get("manifest")


@dataclass
class TableDir:
    """An ``experiment table`` (or demo) output directory."""

    path: Path
    table: dict | None = None
    ablations: dict | None = None
    runs: dict = field(default_factory=dict)  # runs.json
    demo: dict | None = None  # demo.json

    def scene_rows(self, model: str, seed: int = 0) -> list[dict] | None:
        """Per-scene PDMS rows of ``model`` (``scores/<model>.seed<k>.json``), None when not scored."""
        path = self.path / "scores" / f"{model}.seed{seed}.json"
        return read_json(path).get("pdms") if path.is_file() else None

    def model_run(self, model: str) -> Path | None:
        """The seed-0 run of a table row (runs.json, else the experiment layout), None for reference rows."""
        from latentvla.experiment.runs import PLANNER_ROWS, TEACHER_ROWS

        if model in PLANNER_ROWS:
            recorded, layout = self.runs.get("planner", {}).get(f"{model}.seed0"), self.path / "planner" / model
        elif model in TEACHER_ROWS:
            recorded = self.runs.get("teachers", {}).get(TEACHER_ROWS[model])
            layout = self.path / "vla" / TEACHER_ROWS[model]
        else:
            return None
        for cand in (recorded, layout):
            if cand and (Path(cand) / "model.safetensors").is_file():
                return Path(cand)
        return Path(recorded or layout)


@dataclass
class Summary:
    """A scoring summary (``X.summary.json`` beside ``X.csv``, from ``latentvla score`` or the demo)."""

    path: Path
    name: str  # the file's stem before the metric: ``eval/ipad.pdms.summary.json`` -> ``ipad``
    doc: dict


@dataclass
class Artifacts:
    paths: list[Path]
    runs: list[Run] = field(default_factory=list)
    tables: list[TableDir] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
    closed_loop: list[tuple[Path, dict]] = field(default_factory=list)
    data: Path | None = None
    data_note: str = ""  # where the dataset came from, or why there is none

    def runs_of(self, stage: str) -> list[Run]:
        return [r for r in self.runs if r.stage == stage]


def _read(path: Path) -> dict:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path} is not a JSON object")
    return doc


def load_run(path: Path, name: str) -> Run:
    info = _read(path / "run.json")
    metrics = _read(path / "metrics.json") if (path / "metrics.json").is_file() else {}
    cfg = path / "config.yaml"
    return Run(path=path, name=name, stage=str(info.get("stage", "unknown")), info=info, metrics=metrics,
               config_text=cfg.read_text() if cfg.is_file() else "")


def _is_dataset(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def find_runs(root: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Run directories at or below ``root`` (breadth first, sorted), not descending into datasets or caches."""
    found, level = [], [root]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            if (d / "run.json").is_file():
                found.append(d)
            for sub in sorted(p for p in d.iterdir() if p.is_dir()):
                if sub.name in SKIP_DIRS or sub.name.startswith(".") or sub.name.endswith("_cache") \
                        or _is_dataset(sub):
                    continue
                nxt.append(sub)
        level = nxt
    return found


def find_summaries(root: Path) -> list[Summary]:
    out = []
    for d in (root, root / "eval"):
        for p in sorted(d.glob("*.summary.json")) if d.is_dir() else []:
            doc = _read(p)
            if "metric" in doc and "mean" in doc:
                out.append(Summary(p, p.name[: -len(".summary.json")].rsplit(".", 1)[0], doc))
    return out


def collect(paths: list[Path]) -> Artifacts:
    """Everything recognised under ``paths`` (runs deduplicated); a ValueError names a missing or empty PATH."""
    if not paths:
        raise ValueError("--runs needs at least one PATH (a run directory or an `experiment table` output)")
    arts = Artifacts(paths=[Path(p) for p in paths])
    seen: set[Path] = set()
    for root in arts.paths:
        if not root.exists():
            raise ValueError(f"--runs {root}: no such file or directory")
        if not root.is_dir():
            raise ValueError(f"--runs {root} is not a directory (pass a run directory or an `experiment table` "
                             f"output directory)")
        before = (len(arts.runs), len(arts.tables), len(arts.summaries), len(arts.closed_loop))
        known = 0
        for run_dir in find_runs(root):
            key = run_dir.resolve()
            known += 1
            if key in seen:
                continue
            seen.add(key)
            name = run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.resolve().name
            arts.runs.append(load_run(run_dir, name))
        table = TableDir(root)
        for attr, fname in (("table", "table.json"), ("ablations", "ablations.json"), ("demo", "demo.json")):
            if (root / fname).is_file():
                setattr(table, attr, _read(root / fname))
        if (root / "runs.json").is_file():
            table.runs = _read(root / "runs.json")
        if table.table is not None or table.ablations is not None or table.demo is not None:
            arts.tables.append(table)
        arts.summaries += find_summaries(root)
        for p in [*sorted(root.glob(CLOSED_LOOP_GLOB)), *sorted(root.glob(f"*/{CLOSED_LOOP_GLOB}")),
                  *sorted(root.glob("closed_loop/*.json"))]:  # `latentvla experiment table`'s per-model results
            arts.closed_loop.append((p, _read(p)))
        after = (len(arts.runs), len(arts.tables), len(arts.summaries), len(arts.closed_loop))
        if after == before and not known:
            raise ValueError(f"--runs {root} holds no recognised artifact; expected {', '.join(RECOGNISED)}")
    return arts


def _manifest_digest(data: Path) -> str | None:
    from latentvla.runtime.provenance import file_digest

    return file_digest(data / "manifest.json") if (data / "manifest.json").is_file() else None


def resolve_data(arts: Artifacts, data: Path | None = None) -> Artifacts:
    """Set ``arts.data``: ``data`` if given (it must be a dataset), else the dataset recorded in the scoring
    summaries or demo.json, else a ``world/`` beside the runs, accepted only when its manifest digest is the one
    the runs were trained on. ``arts.data_note`` says where it came from or why there is none."""
    if data is not None:
        data = Path(data)
        if not _is_dataset(data):
            raise ValueError(f"--data {data} is not a dataset directory (no manifest.json)")
        arts.data, arts.data_note = data, f"--data {data}"
        return arts
    want = {r.manifest_digest for r in arts.runs if r.stage != "vla-pretrain" and r.manifest_digest}
    recorded: list[tuple[str, Path]] = []
    for t in arts.tables:
        for p in sorted((t.path / "scores").glob("*.summary.json"))[:1]:
            recorded.append((f"recorded in {p}", Path(_read(p).get("data", ""))))
        if t.demo and t.demo.get("world"):
            recorded.append((f"recorded in {t.path / 'demo.json'}", Path(t.demo["world"])))
    recorded += [(f"recorded in {s.path}", Path(s.doc.get("data", ""))) for s in arts.summaries]
    for p in arts.paths:  # a demo / experiment layout: DIR/world beside DIR/planner/..., DIR/lam, ...
        recorded += [(f"found beside the runs in {d}", d / "world") for d in [p, *p.resolve().parents[:3]]]
    tried = []
    for how, cand in recorded:
        if not str(cand) or not _is_dataset(cand):
            continue
        digest = _manifest_digest(cand)
        if want and digest not in want:
            tried.append(f"{cand} (manifest {digest}, runs trained on {sorted(want)})")
            continue
        arts.data, arts.data_note = cand, f"{cand} ({how})"
        return arts
    arts.data_note = ("no dataset of these runs was found" + (f"; rejected: {'; '.join(tried)}" if tried else "")
                      + "; pass --data DIR")
    return arts


def pretty_json(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
