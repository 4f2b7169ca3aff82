"""The report's closed-loop section: open-loop PDMS beside closed-loop score per model (with both orderings and
their rank agreement) and, per closed-loop result file, the per-family table of the contract keys."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from latentvla.report.collect import Artifacts
from latentvla.report.figures import PALETTE, fig_uri
from latentvla.report.html import cap, h3, img, na, num, p, table

CLOSED_LOOP_NOT_RUN = ("not run: no closed-loop results among the PATHs (`latentvla eval closed-loop ... --out "
                       "closed_loop_NAME.json`, or the closed-loop columns of `latentvla experiment table`)")
RESULT_KEYS = ("closed_loop_score", "collision_rate", "offroad_rate", "red_light_violations", "route_completion",
               "mean_progress_m", "comfort_rate")


def ranks(values: list[float]) -> np.ndarray:
    """Ranks (1 = best = highest), ties sharing their mean rank."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(values, dtype=float), method="average")


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (None for fewer than 3 models or a constant column)."""
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement_sentence(rows: list[dict]) -> str:
    rho = spearman([r["pdms"] for r in rows], [r["closed_loop_score"] for r in rows])
    best_open = max(rows, key=lambda r: r["pdms"])["model"]
    best_closed = max(rows, key=lambda r: r["closed_loop_score"])["model"]
    same = "the same model" if best_open == best_closed else f"{best_open} open loop, {best_closed} closed loop"
    if rho is None:
        return f"ordering: too few models (or ties) for a rank correlation; best: {same}"
    verdict = "agree" if rho >= 0.8 else "partly agree" if rho >= 0.4 else "disagree"
    return (f"open-loop PDMS and closed-loop score {verdict} on the ordering of the {len(rows)} models "
            f"(Spearman ρ = {rho:.2f}); best: {same}")


def pdms_vs_closed_loop(rows: list[dict]) -> str:
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_axes((0.1, 0.14, 0.86, 0.78))
    for k, r in enumerate(rows):
        ax.scatter([r["pdms"]], [r["closed_loop_score"]], s=50, alpha=0.7, color=PALETTE[k % len(PALETTE)],
                   edgecolors="black", linewidths=0.5)
        ax.annotate(r["model"], (r["pdms"], r["closed_loop_score"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls="--")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("open-loop PDMS (test split)")
    ax.set_ylabel("closed-loop score (reactive)")
    ax.grid(alpha=0.3)
    return fig_uri(fig)


def _model_rows(arts: Artifacts) -> list[tuple[str, list[dict]]]:
    from latentvla.report.sections import comparison_sources

    out = []
    for label, t in comparison_sources(arts):
        rows = [r for r in t.get("rows", []) if r.get("closed_loop_score") is not None]
        if rows:
            out.append((label, rows))
    return out


def _result_table(doc: dict) -> str:
    fams = doc.get("by_family") or {}
    body = [(f, v.get("scenes", "-"), *(num(v.get(k)) for k in RESULT_KEYS)) for f, v in fams.items()
            if isinstance(v, dict)]
    mean = doc.get("mean") or {}
    body.append(("all", doc.get("scenes", "-"), *(num(mean.get(k)) for k in RESULT_KEYS)))
    return table(("family", "scenes", *RESULT_KEYS), body)


def closed_loop_section(arts: Artifacts) -> str:
    models = _model_rows(arts)
    results = [(path, doc) for path, doc in arts.closed_loop if isinstance(doc.get("mean"), dict)]
    if not models and not results:
        return p(CLOSED_LOOP_NOT_RUN, "na")
    out = []
    for label, rows in models:
        out.append(h3(f"Open loop vs closed loop ({label})"))
        ol, cl = ranks([r["pdms"] for r in rows]), ranks([r["closed_loop_score"] for r in rows])
        out.append(table(("model", "PDMS", "closed_loop_score", "red_light_violations", "open-loop rank",
                          "closed-loop rank"),
                         [(r["model"], num(r["pdms"]), num(r["closed_loop_score"]),
                           num(r.get("red_light_violations"), 2), f"{a:g}", f"{b:g}")
                          for r, a, b in zip(rows, ol, cl)]))
        out.append(p(agreement_sentence(rows)))
        out.append(img(pdms_vs_closed_loop(rows), f"open-loop PDMS vs closed-loop score ({label})"))
        out.append(cap("closed loop: each model's first seed, reactive traffic, on a family-balanced subset of the "
                       "test split (`experiment table` closed-loop settings); log-replay drives as the world's expert"))
    for path, doc in results:
        out.append(h3(str(path)))
        timing = doc.get("timing") or {}
        out.append(cap(f"agent {doc.get('agent', '?')}, {doc.get('mode', '?')}, {num(doc.get('seconds'), 1)} s per "
                       f"scene, split {doc.get('split', '?')}: {doc.get('scenes', '?')} scenes, "
                       f"{doc.get('invalid', 0)} invalid; {num(timing.get('realtime_factor'), 1)}x real time"))
        out.append(_result_table(doc))
    if not results:
        out.append(na("no per-family closed-loop results (closed_loop*.json or closed_loop/*.json) among the PATHs"))
    return "".join(out)
