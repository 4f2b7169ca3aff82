"""Statistics and output of ``latentvla experiment table``: per-scene scores in, summary tables out.

No training and no scoring happens here: the input is, per model and seed, the per-scene rows of
``latentvla.eval.runner.score_split(..., metric="pdms")`` (and optionally the EPDMS rows). Following NAVSIM, a scene
whose agent failed (``valid`` false) scores 0 on every sub-score, so failing on hard scenes never raises a mean.

Uncertainty: models are compared on the *same* scenes, so differences are paired per scene. The scene is the
resampling unit of the bootstrap; seeds are first averaged per scene, so seed noise enters through the per-scene
mean rather than being resampled separately.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from rich.table import Table

from latentvla.runtime.io import atomic_write_text, write_json

METRIC = "pdms-v1.1"
SUBSCORES = ("nc", "dac", "ttc", "c", "ep", "pdms")
PAIRS: dict[str, tuple[str, str]] = {
    "full-ipad": ("full", "ipad"),
    "distilled-ipad": ("distilled", "ipad"),
    "full-distilled": ("full", "distilled"),
    "ipad-aux-ipad": ("ipad-aux", "ipad"),
    "ipad-wide-ipad": ("ipad-wide", "ipad"),
}
RECOVERY = ("full", "distilled", "ipad")
CSV_COLUMNS = ("model", "nc", "dac", "ttc", "c", "ep", "pdms", "epdms", "params", "latency_ms", "closed_loop_score",
               "red_light_violations")
BOOT_CHUNK_ELEMENTS = 1 << 22  # resampled indices held at once (~32 MB of int64), whatever n_boot and N are


def _is_valid(v: object) -> bool:
    """``valid`` as a bool; also accepts the 'true'/'false' strings of a per-scene CSV (bool('false') is True)."""
    if isinstance(v, str):
        return v.strip().lower() == "true"
    return bool(v)


def _score(row: dict, key: str) -> float:
    """One scene's ``key`` score: 0.0 for an invalid scene (NAVSIM), a ValueError for a valid one lacking it."""
    if not _is_valid(row.get("valid")):
        return 0.0
    v = row.get(key)
    x = float("nan") if v is None or v == "" else float(v)
    if not math.isfinite(x):
        raise ValueError(f"scene '{row.get('token')}' is valid but has no finite '{key}' ({v!r})")
    return x


def scene_matrix(rows_by_seed: list[list[dict]], key: str = "pdms") -> tuple[list[str], np.ndarray]:
    """(tokens, scores of shape (S seeds, N scenes)) with invalid scenes as 0.

    Every seed must list the same tokens in the same order (the first seed's), so columns are the same scenes and
    paired statistics stay paired; otherwise a ValueError names the first mismatching token.
    """
    if not rows_by_seed or not rows_by_seed[0]:
        raise ValueError("no seeds or no scenes to tabulate")
    tokens = [r["token"] for r in rows_by_seed[0]]
    if len(set(tokens)) != len(tokens):
        dup = next(t for i, t in enumerate(tokens) if t in tokens[:i])
        raise ValueError(f"scene token '{dup}' appears twice in seed 0")
    out = np.empty((len(rows_by_seed), len(tokens)), dtype=np.float64)
    for s, rows in enumerate(rows_by_seed):
        other = [r["token"] for r in rows]
        if other != tokens:
            i = next(i for i in range(max(len(tokens), len(other)))
                     if i >= len(tokens) or i >= len(other) or tokens[i] != other[i])
            bad = other[i] if i < len(other) else tokens[i]  # seed s's token, or seed 0's if s is shorter
            raise ValueError(f"seed {s} does not score the same scenes in the same order as seed 0: "
                             f"first mismatch at scene token '{bad}'")
        out[s] = [_score(r, key) for r in rows]
    return tokens, out


def _token_diff(tokens: list[str], ref: list[str]) -> str:
    """'extra scene token 'x'' / 'missing scene token 'y'' (first of each, in list order) for error messages."""
    ref_set, tok_set = set(ref), set(tokens)
    extra = [t for t in tokens if t not in ref_set]
    missing = [t for t in ref if t not in tok_set]
    parts = ([f"extra scene token '{extra[0]}'"] if extra else []) + (
        [f"missing scene token '{missing[0]}'"] if missing else [])
    return ", ".join(parts)


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (S, N) or (N,), got {x.shape}")
    return x


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0,
                     ci: float = 0.95, groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """(mean difference a - b, lo, hi): percentile bootstrap over scenes of the per-scene paired difference.

    ``a`` and ``b`` are (S seeds, N scenes) (or (N,)) scores of two models on the same scenes, seeds paired by
    index. The per-scene difference is averaged over seeds *before* resampling, so the scene is the unit and seed
    noise enters through the per-scene mean. Resampling runs in chunks of at most ``BOOT_CHUNK_ELEMENTS`` indices
    (10k x 2000 scenes takes well under a second in bounded memory) and is deterministic for a given ``seed``.

    ``groups`` (N labels, e.g. each scene's log) makes it a cluster bootstrap: whole groups are resampled and the
    statistic is the scene-weighted mean of the drawn groups. Scenes cut from one log share its situation, so
    they are not independent, and the scene bootstrap is then too narrow; with one scene per group (in scene order)
    the two bootstraps draw the same indices and agree exactly.
    """
    a2, b2 = _as_2d(a, "a"), _as_2d(b, "b")
    if a2.shape != b2.shape:
        if a2.shape[1] == b2.shape[1]:
            raise ValueError(f"models have different numbers of seeds ({a2.shape[0]} vs {b2.shape[0]})")
        raise ValueError(f"shape mismatch: {np.shape(a)} vs {np.shape(b)}")
    if a2.shape[1] == 0:
        raise ValueError("no scenes to bootstrap")
    if n_boot < 1 or not 0.0 < ci < 1.0:
        raise ValueError(f"need n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")
    d = (a2 - b2).mean(axis=0) if a2.shape[0] > 1 else a2[0] - b2[0]
    if groups is None:
        sums, counts = d, None  # every draw holds n scenes: no per-draw count to gather
    else:
        labels = np.asarray(groups)
        if labels.shape != d.shape:
            raise ValueError(f"groups must hold one label per scene ({d.shape[0]}), got shape {labels.shape}")
        _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
        order = np.argsort(np.argsort(first))  # group ids in order of first appearance
        inverse = order[inverse]
        sums = np.bincount(inverse, weights=d)
        counts = np.bincount(inverse).astype(np.float64)
    n = sums.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, BOOT_CHUNK_ELEMENTS // n)
    for i in range(0, n_boot, chunk):
        m = min(chunk, n_boot - i)
        idx = rng.integers(0, n, size=(m, n))
        means[i:i + m] = sums[idx].sum(axis=1) / (n if counts is None else counts[idx].sum(axis=1))
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.percentile(means, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(np.mean(d)), float(lo), float(hi)


def recovery(full: float, distilled: float, host: float) -> float | None:
    """Share of the full model's gain over the host that the distilled model keeps; None when there is no gain."""
    if abs(full - host) < 1e-9:
        return None
    return (distilled - host) / (full - host)


def model_row(model: str, rows_by_seed: list[list[dict]], params: int, latency_ms: float | None,
              epdms_rows_by_seed: list[list[dict]] | None = None, closed_loop: dict | None = None) -> dict:
    """One table row: means over seeds of per-seed means over scenes.

    An invalid scene counts as 0 on *every* sub-score (nc, dac, ttc, c, ep and pdms), as NAVSIM scores a failed
    agent. ``pdms_std`` is the sample standard deviation (ddof=1) of the per-seed mean PDMS (0.0 for one seed);
    ``epdms`` is the mean EPDMS over seeds (invalid -> 0) or None; ``by_family`` maps each family (sorted) to
    its mean PDMS over seeds and that family's scenes. ``closed_loop_score`` and ``red_light_violations`` are the
    closed-loop means of the row (None when it was not run).
    """
    tokens, pdms = scene_matrix(rows_by_seed, "pdms")
    row: dict = {"model": model}
    for key in SUBSCORES:
        mat = pdms if key == "pdms" else scene_matrix(rows_by_seed, key)[1]
        row[key] = float(mat.mean(axis=1).mean())
    per_seed = pdms.mean(axis=1)
    row["pdms_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    row["epdms"] = None
    if epdms_rows_by_seed is not None:
        e_tokens, epdms = scene_matrix(epdms_rows_by_seed, "epdms")
        if set(e_tokens) != set(tokens):
            raise ValueError(f"model '{model}': EPDMS and PDMS rows cover different scenes "
                             f"({_token_diff(e_tokens, tokens)})")
        row["epdms"] = float(epdms.mean(axis=1).mean())
    row["params"] = int(params)
    row["latency_ms"] = None if latency_ms is None else float(latency_ms)
    families = np.array([r["family"] for r in rows_by_seed[0]])
    row["by_family"] = {str(f): float(pdms[:, families == f].mean()) for f in sorted(set(families.tolist()))}
    for key in ("closed_loop_score", "red_light_violations"):
        v = None if closed_loop is None else closed_loop.get(key)
        row[key] = None if v is None else float(v)
    return row


def build_table(models: dict[str, dict], pairs: dict[str, tuple[str, str]] = PAIRS,
                recovery_of: tuple[str, str, str] | None = RECOVERY, split: str = "test", n_boot: int = 10000,
                seed: int = 0, logs: dict[str, str] | None = None) -> dict:
    """The whole experiment table (JSON-ready): one row per model in insertion order, paired PDMS differences
    with 95% bootstrap CIs, and the distillation recovery.

    ``models[name] = {"rows": rows_by_seed, "params": int, "latency_ms": float | None, "epdms_rows": optional}``.
    All models must score the same scene tokens (rows are aligned by token for pairing). All multi-seed models
    must have the same number of seeds S; a single-seed model (a deterministic reference planner) is compared
    against an S-seed model by reusing its one row for every seed. Pairs naming a missing model are skipped and
    listed under ``paired_missing``; ``recovery`` is None when ``recovery_of`` is None or names a missing model.
    With ``logs`` (scene token -> log), ``paired_by_log`` holds the same differences with CIs from resampling whole
    logs (``paired_bootstrap(groups=...)``), the honest interval when a log yields several overlapping scenes.
    """
    if not models:
        raise ValueError("no models to tabulate")
    mats: dict[str, np.ndarray] = {}
    ref_tokens: list[str] | None = None
    for name, m in models.items():
        tokens, mat = scene_matrix(m["rows"], "pdms")
        if ref_tokens is None:
            ref_tokens = tokens
        elif tokens != ref_tokens:
            if set(tokens) != set(ref_tokens):
                raise ValueError(f"model '{name}' does not score the same scenes as '{next(iter(models))}' "
                                 f"({_token_diff(tokens, ref_tokens)})")
            order = {t: i for i, t in enumerate(tokens)}
            mat = mat[:, [order[t] for t in ref_tokens]]
        mats[name] = mat
    seeds = max(mat.shape[0] for mat in mats.values())
    for name, mat in mats.items():
        if mat.shape[0] not in (1, seeds):
            raise ValueError(f"model '{name}' has {mat.shape[0]} seeds, others {seeds}; only single-seed "
                             "reference models may differ")
    rows = [model_row(name, m["rows"], m["params"], m.get("latency_ms"), m.get("epdms_rows"), m.get("closed_loop"))
            for name, m in models.items()]
    paired: dict[str, list[float]] = {}
    paired_by_log: dict[str, list[float]] = {}
    missing: list[str] = []
    if logs is not None:
        unknown = [t for t in ref_tokens if t not in logs]
        if unknown:
            raise ValueError(f"scene '{unknown[0]}' has no log in `logs` ({len(unknown)} scenes missing)")
        log_labels = np.array([logs[t] for t in ref_tokens])
    for pair_name, (ma, mb) in pairs.items():
        if ma not in mats or mb not in mats:
            missing.append(pair_name)
            continue
        a, b = mats[ma], mats[mb]
        if a.shape[0] != b.shape[0]:  # one side is a single-seed reference: reuse its row for every seed
            a, b = np.broadcast_to(a, (seeds, a.shape[1])), np.broadcast_to(b, (seeds, b.shape[1]))
        paired[pair_name] = list(paired_bootstrap(a, b, n_boot=n_boot, seed=seed))
        if logs is not None:
            paired_by_log[pair_name] = list(paired_bootstrap(a, b, n_boot=n_boot, seed=seed, groups=log_labels))
    rec = None
    if recovery_of is not None and all(n in mats for n in recovery_of):
        by_name = {r["model"]: r["pdms"] for r in rows}
        rec = recovery(*(by_name[n] for n in recovery_of))
    table = {"metric": METRIC, "split": split, "scenes": len(ref_tokens), "seeds": seeds, "rows": rows,
             "paired": paired, "paired_missing": missing, "recovery": rec}
    if logs is not None:
        table["logs"] = len(set(log_labels.tolist()))
        table["paired_by_log"] = paired_by_log
    return table


def _cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


def write_table(table: dict, out_dir: Path, stem: str = "table") -> tuple[Path, Path]:
    """``{stem}.csv`` (``CSV_COLUMNS``, one line per model; floats rounded to 6 decimals, None empty) and
    ``{stem}.json`` (the whole table), both written atomically so a crash never leaves half a table."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in table["rows"]:
        w.writerow([_cell(r.get(c)) for c in CSV_COLUMNS])
    csv_path, json_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    atomic_write_text(csv_path, buf.getvalue())
    write_json(json_path, table, indent=1)
    return csv_path, json_path


def human_count(n: int) -> str:
    """1234567 -> '1.2M' (parameter counts in a table column)."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _f3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_tables(table: dict) -> tuple[Table, Table]:
    """(main table with the paired differences and recovery in its caption, per-family PDMS table)."""
    main = Table(title=f"{table['metric']} on '{table['split']}': {table['scenes']} scenes x {table['seeds']} "
                       "seed(s); invalid scenes count 0")
    for col in ("model", "NC", "DAC", "TTC", "C", "EP", "PDMS ± std", "EPDMS", "params", "latency ms", "CL score",
                "red lights"):
        main.add_column(col, justify="left" if col == "model" else "right")
    for r in table["rows"]:
        lat = r["latency_ms"]
        main.add_row(r["model"], *(_f3(r[k]) for k in ("nc", "dac", "ttc", "c", "ep")),
                     f"{r['pdms']:.3f} ± {r['pdms_std']:.3f}", _f3(r["epdms"]), human_count(r["params"]),
                     "-" if lat is None else f"{lat:.1f}", _f3(r.get("closed_loop_score")),
                     "-" if r.get("red_light_violations") is None else f"{r['red_light_violations']:.2f}")
    parts = [f"{name} {m:+.3f} [{lo:+.3f}, {hi:+.3f}]" for name, (m, lo, hi) in table["paired"].items()]
    rec = table["recovery"]
    caption = "paired PDMS difference, 95% bootstrap CI over scenes: " + ("; ".join(parts) or "none")
    if table.get("paired_by_log"):
        parts = [f"{name} [{lo:+.3f}, {hi:+.3f}]" for name, (m, lo, hi) in table["paired_by_log"].items()]
        caption += f"\nthe same, CI over the {table['logs']} logs (scenes of one log resampled together): " + "; ".join(parts)
    caption += f"\nrecovery (distilled - host) / (full - host): {'n/a' if rec is None else f'{rec:.3f}'}"
    main.caption = caption
    families = sorted({f for r in table["rows"] for f in r["by_family"]})
    fam = Table(title="PDMS by scene family")
    fam.add_column("model")
    for f in families:
        fam.add_column(f, justify="right")
    for r in table["rows"]:
        fam.add_row(r["model"], *(_f3(r["by_family"].get(f)) for f in families))
    return main, fam
