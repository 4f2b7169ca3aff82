"""Every section of the report except the failure gallery: each function returns the section's HTML body and
says "not available: <why>" for whatever artifact is missing."""

from __future__ import annotations

import tempfile
from pathlib import Path

from latentvla.report import figures as F
from latentvla.report.collect import Artifacts, Run, TableDir, pretty_json
from latentvla.report.html import Raw, cap, details, esc, h3, img, na, num, p, pre, table

REFERENCE_MODELS = ("pdm-closed", "log-replay")
NO_CURVES = ("per-step / per-epoch curves: none of these runs holds a Lightning metrics.csv (the trainers write "
             "RUN/curves/<stage>/metrics.csv; runs trained before that only keep the final numbers in metrics.json, "
             "shown below per stage)")
TRAINING_KEYS = {  # stage -> the final numbers metrics.json keeps (shown when present)
    "lam": ("stage1_steps", "stage1_seconds", "stage2_steps", "stage2_seconds", "train_windows", "val_windows",
            "recon_gain"),
    "vla-pretrain": ("epochs", "steps", "train_examples", "val_examples", "best_val_nll", "train_seconds"),
    "vla": ("epochs", "steps", "train_scenes", "val_scenes", "best_val_nll", "val_ade", "val_fde", "train_seconds",
            "head_train_seconds", "parameters"),
    "planner": ("host", "epochs", "steps", "train_scenes", "val_scenes", "val_ade", "val_fde", "train_seconds",
                "step_ms_median", "trainable_parameters"),
}
FINAL_PANELS = (("planner", "val_ade", "planner: val ADE [m]"), ("vla", "best_val_nll", "teacher: best val NLL"),
                ("vla", "val_ade", "teacher head: val ADE [m]"),
                ("vla-pretrain", "best_val_nll", "pretraining: best val NLL"))


def human(n) -> str:
    from latentvla.experiment.stats import human_count

    return "-" if n is None else human_count(int(n))


# --- the comparison and the two plots drawn from it ------------------------------------------------------------
def summary_rows(arts: Artifacts) -> list[dict]:
    """Table-like rows from scoring summaries (``latentvla score`` outputs), PDMS v1.1 with its EPDMS beside."""
    epdms = {s.name: s.doc for s in arts.summaries if str(s.doc.get("metric", "")).startswith("epdms")}
    rows = []
    for s in arts.summaries:
        if not str(s.doc.get("metric", "")).startswith("pdms"):
            continue
        mean = s.doc.get("mean") or {}
        e = epdms.get(s.name)
        rows.append({"model": s.name, **{k: mean.get(k) for k in ("nc", "dac", "ttc", "c", "ep")},
                     "pdms": s.doc.get("pdms_with_invalid_as_zero", mean.get("pdms")), "pdms_std": None,
                     "epdms": None if e is None else e.get("epdms_with_invalid_as_zero"), "params": None,
                     "latency_ms": None,
                     "by_family": {f: v.get("pdms") for f, v in (s.doc.get("by_family") or {}).items()},
                     "source": str(s.path)})
    return rows


def comparison_sources(arts: Artifacts) -> list[tuple[str, dict]]:
    """(label, table dict) per experiment table found, or one pseudo-table of scoring summaries."""
    out = [(str(t.path), t.table) for t in arts.tables if t.table is not None]
    if not out:
        rows = summary_rows(arts)
        if rows:
            split = next(s.doc.get("split", "?") for s in arts.summaries)
            out.append(("scoring summaries", {"metric": "pdms-v1.1", "split": split, "rows": rows, "paired": {},
                                              "recovery": None, "from_summaries": True}))
    return out


def _main_table(t: dict) -> str:
    headers = ("model", "NC", "DAC", "TTC", "C", "EP", "PDMS ± std", "EPDMS", "params", "latency ms")
    cells, classes = [], []
    for r in t["rows"]:
        pd = num(r.get("pdms")) + ("" if r.get("pdms_std") is None else f" ± {r['pdms_std']:.3f}")
        lat = r.get("latency_ms")
        cells.append((r["model"], *(num(r.get(k)) for k in ("nc", "dac", "ttc", "c", "ep")), pd, num(r.get("epdms")),
                      human(r.get("params")) if r.get("params") is not None else "-",
                      "-" if lat is None else f"{lat:.2f}"))
        classes.append("ref" if r["model"] in REFERENCE_MODELS else "")
    return table(headers, cells, classes)


def comparison_section(arts: Artifacts) -> str:
    sources = comparison_sources(arts)
    if not sources:
        return na("no experiment table (table.json of `latentvla experiment table` or `latentvla demo`) and no "
                  "scoring summaries (*.summary.json of `latentvla score`) among the PATHs")
    out = []
    for label, t in sources:
        if len(sources) > 1 or t.get("from_summaries"):
            out.append(h3(label))
        if t.get("from_summaries"):
            out.append(cap("PDMS v1.1 of each scoring summary, invalid scenes counted as 0; no params or latency "
                           "(only `latentvla experiment table` measures them)"))
        else:
            out.append(cap(f"{t['metric']} on split '{t['split']}': {t.get('scenes')} scenes × {t.get('seeds')} "
                           f"seed(s), profile {t.get('profile', '?')}, latency with {t.get('latency_threads', '?')} "
                           f"torch thread(s); invalid scenes count 0; grey rows read privileged data"))
        out.append(_main_table(t))
        if t.get("paired"):
            out.append(table(("pair", "mean PDMS difference", "95% CI (paired bootstrap over scenes)"),
                             [(k, f"{m:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]") for k, (m, lo, hi) in t["paired"].items()]))
        if not t.get("from_summaries"):
            rec = t.get("recovery")
            out.append(p(f"recovery (distilled - ipad) / (full - ipad): {'n/a' if rec is None else f'{rec:.3f}'}"
                         + (f"; pairs not computed (model missing): {', '.join(t['paired_missing'])}"
                            if t.get("paired_missing") else "")))
    for tdir in arts.tables:
        if tdir.ablations is not None:
            out.append(h3(f"Ablations ({tdir.path / 'ablations.json'})"))
            out.append(_main_table(tdir.ablations))
    return "".join(out)


def families_section(arts: Artifacts) -> str:
    out = []
    for label, t in comparison_sources(arts):
        rows = [r for r in t["rows"] if r.get("by_family")]
        if not rows:
            out.append(na(f"{label}: no per-family PDMS in the table"))
            continue
        out.append(img(F.family_bars(rows), f"PDMS per family and model ({label})"))
        out.append(cap(f"{label}: mean PDMS of each model on each scene family's test scenes (invalid scenes as 0)"))
    return "".join(out) or na("no comparison table (see above)")


def latency_section(arts: Artifacts) -> str:
    out = []
    for label, t in comparison_sources(arts):
        rows = [r for r in t["rows"] if r.get("latency_ms")]
        if not rows:
            out.append(na(f"{label}: no latency measured (only `latentvla experiment table` times the networks)"))
            continue
        out.append(img(F.latency_scatter(rows), f"latency vs PDMS ({label})"))
        missing = [r["model"] for r in t["rows"] if not r.get("latency_ms")]
        out.append(cap(f"{label}: network latency, batch 1 on precomputed features (docs/EVALUATION.md)"
                       + (f"; no latency: {', '.join(missing)}" if missing else "")))
    return "".join(out) or na("no comparison table (see above)")


# --- training --------------------------------------------------------------------------------------------------
def curve_files(run: Run) -> list[Path]:
    """Lightning ``CSVLogger`` files (metrics.csv) inside the run directory, not inside a nested run."""
    return [f for f in sorted(run.path.rglob("metrics.csv"))
            if not any((d / "run.json").is_file() for d in f.parents if d != run.path and run.path in d.parents)]


def training_section(arts: Artifacts) -> str:
    out = []
    curves = [(r, f) for r in arts.runs for f in curve_files(r)]
    for run, f in curves:
        series = F.read_curves(f)
        if series:
            out.append(h3(f"{run.name} ({run.stage}): {f.relative_to(run.path)}"))
            out.append(img(F.curves_figure(series), f"training curves of {run.name}"))
    if not out:
        out.append(na(NO_CURVES))
    any_run = False
    for stage, keys in TRAINING_KEYS.items():
        runs = [r for r in arts.runs_of(stage) if r.metrics and not r.metrics.get("untrained")]
        if not runs:
            continue
        any_run = True
        used = [k for k in keys if any(k in r.metrics for r in runs)]
        out.append(h3(f"final numbers: {stage} ({len(runs)} run{'s' if len(runs) > 1 else ''})"))
        out.append(table(("run", *used), [(r.name, *(num(r.metrics.get(k)) for k in used)) for r in runs]))
    if not any_run and not curves:
        return na("no training run with metrics.json among the PATHs")
    panels = {}
    for stage, key, title in FINAL_PANELS:
        vals = {r.name: float(r.metrics[key]) for r in arts.runs_of(stage)
                if isinstance(r.metrics.get(key), (int, float))}
        if vals:
            panels[title] = vals
    if panels:
        out.append(h3("final validation numbers per stage"))
        out.append(img(F.final_numbers(panels), "final validation numbers per stage"))
        out.append(cap("the selected epoch's validation numbers of every run, per stage"))
    return "".join(out)


# --- LAM -------------------------------------------------------------------------------------------------------
def lam_section(arts: Artifacts) -> str:
    from latentvla.lam.report import REPORT_KEYS

    runs = arts.runs_of("lam")
    if not runs:
        return na("no latent action model run (stage lam) among the PATHs")
    out = []
    for run in runs:
        out.append(h3(f"{run.name}"))
        if any(k in run.metrics for k in REPORT_KEYS):
            keys = [k for k in REPORT_KEYS if k in run.metrics]
            out.append(table(("metric", "value"), [(k, num(run.metrics[k])) for k in keys]))
        else:
            out.append(na(f"no LAM report metrics in {run.path / 'metrics.json'} (`latentvla lam report`)"))
        rep = run.path / "report"
        names = ("code_usage", "codes_ego", "codes_env")
        uris, source = {}, f"{rep}"
        if all((rep / f"{n}.png").is_file() for n in names):
            uris = {n: F.file_uri(rep / f"{n}.png") for n in names}
        elif arts.data is None:
            out.append(na(f"no report figures in {rep} and no dataset to draw them from ({arts.data_note})"))
        else:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    uris = F.lam_code_figures(run, arts.data, Path(tmp))
                source = f"the label store of {arts.data}"
            except (FileNotFoundError, ValueError, KeyError) as e:
                out.append(na(f"no report figures in {rep} and none drawn: {e}"))
        if uris:
            out.append(img(uris["code_usage"], f"{run.name}: code usage"))
            out.append(cap(f"share of test-split tokens per code, ego and environment codebooks (from {source})"))
            for name in ("ego", "env"):
                out.append(details(f"example frame pairs per {name} code (start | end of a window given that code)",
                                   img(uris[f"codes_{name}"], f"{run.name}: {name} code examples")))
    return "".join(out)


# --- teacher ---------------------------------------------------------------------------------------------------
def teacher_section(arts: Artifacts) -> str:
    teachers = [r for r in arts.runs_of("vla") if not r.info.get("untrained") and not r.info.get("blind")]
    if not teachers:
        return na("no VLA teacher run (stage vla) among the PATHs")
    done = {r.name: r.metrics for r in teachers if isinstance(r.metrics.get("by_family"), dict)}
    out = []
    if done:
        out.append(img(F.teacher_bars(done), "teacher token accuracy per family"))
        out.append(cap("greedy-generation token accuracy on the test split per scene family (bars); dashed: the "
                       "train split's majority code per position, dotted: the same teacher trained on blank images"))
        fams = sorted({f for m in done.values() for f in m["by_family"]})
        keys = ("token_accuracy", "sequence_accuracy", "top5_accuracy", "nll", "baseline_token_accuracy",
                "blind_token_accuracy")
        out.append(table(("teacher", *keys, *fams),
                         [(n, *(num(m.get(k)) for k in keys), *(num(m["by_family"].get(f)) for f in fams))
                          for n, m in done.items()]))
    missing = [r.name for r in teachers if r.name not in done]
    if missing:
        out.append(na(f"not evaluated: {', '.join(missing)} (`latentvla vla eval --run RUN --data DATA` writes "
                      f"by_family into RUN/metrics.json)"))
    return "".join(out)


# --- provenance ------------------------------------------------------------------------------------------------
def _prov(run: Run) -> dict:
    return run.info.get("provenance") or {}


def provenance_section(arts: Artifacts) -> str:
    out = [p("PATHs: " + ", ".join(str(x) for x in arts.paths)), p(f"dataset: {arts.data_note}")]
    if arts.data is not None:
        from latentvla.data.store import open_store
        from latentvla.runtime.provenance import file_digest

        try:
            digest = open_store(arts.data, verify_blobs=False).digest()
        except Exception as e:  # noqa: BLE001 - a damaged dataset still gets a report
            digest = f"unavailable ({e})"
        out.append(p(f"dataset digest {digest}, manifest digest {file_digest(arts.data / 'manifest.json')}"))
    commits: dict[str, int] = {}
    for r in arts.runs:
        c = str(_prov(r).get("git_commit"))
        commits[c] = commits.get(c, 0) + 1
    if commits:
        out.append(p("commits: " + "; ".join(f"{c} ({n} run{'s' if n > 1 else ''})" for c, n in commits.items())))
    keys = sorted({s.doc.get("cache_key") for s in arts.summaries if s.doc.get("cache_key")}
                  | {_read_key(t) for t in arts.tables} - {None})
    if keys:
        out.append(p(f"metric cache key(s) of the scores: {', '.join(keys)}"))
    if arts.runs:
        out.append(table(("run", "stage", "config hash", "commit", "version", "manifest digest", "parents"),
                         [(r.name, r.stage, r.info.get("config_hash", "-"), _prov(r).get("git_commit") or "-",
                           _prov(r).get("latentvla_version") or "-", r.manifest_digest or "-",
                           Raw("<br>".join(esc(x) for x in _prov(r).get("parents") or []) or "-")) for r in arts.runs]))
        out.append(h3("Configs"))
        out.extend(details(f"{r.name} ({r.stage}) config.yaml", pre(r.config_text or "(no config.yaml)"))
                   for r in arts.runs)
    for t in arts.tables:
        if t.demo is not None and t.demo.get("provenance"):
            out.append(details(f"{t.path / 'demo.json'} provenance", pre(pretty_json(t.demo["provenance"]))))
    return "".join(out)


def _read_key(t: TableDir) -> str | None:
    from latentvla.runtime.io import read_json

    for p_ in sorted((t.path / "scores").glob("*.summary.json"))[:1]:
        return read_json(p_).get("cache_key")
    return None
