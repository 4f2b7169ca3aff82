"""The report's plots (matplotlib, Agg, small dpi), each returned as a ``data:image/png;base64`` URI so the HTML
file is self-contained."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 80
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def png_uri(data: bytes) -> str:
    if not data.startswith(PNG_MAGIC):
        raise ValueError("not a PNG image")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def fig_uri(fig: Figure, dpi: int = DPI) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return png_uri(buf.getvalue())


def file_uri(path: Path) -> str:
    return png_uri(Path(path).read_bytes())


def family_bars(rows: list[dict]) -> str:
    """Grouped bars: per model (x), one bar per scene family (PDMS, invalid scenes as 0)."""
    families = sorted({f for r in rows for f in r.get("by_family") or {}})
    models = [r["model"] for r in rows]
    fig = Figure(figsize=(max(6.0, 0.55 * len(models) * max(1, len(families)) ** 0.5 + 2), 3.4))
    ax = fig.add_axes((0.07, 0.3, 0.75, 0.62))
    width = 0.8 / max(1, len(families))
    x = np.arange(len(models))
    for k, fam in enumerate(families):
        vals = [np.nan if (r.get("by_family") or {}).get(fam) is None else r["by_family"][fam] for r in rows]
        ax.bar(x - 0.4 + (k + 0.5) * width, vals, width, label=fam, color=PALETTE[k % len(PALETTE)])
    ax.set_xticks(x, models, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("PDMS")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="family", fontsize=7, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig_uri(fig)


def latency_scatter(rows: list[dict]) -> str:
    """PDMS against batch-1 latency (log x), marker area proportional to the parameter count."""
    pts = [r for r in rows if r.get("latency_ms")]
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_axes((0.1, 0.14, 0.86, 0.78))
    params = np.array([float(r.get("params") or 0) for r in pts])
    size = 20 + 600 * np.sqrt(params / params.max()) if len(pts) and params.max() > 0 else np.full(len(pts), 40.0)
    for k, (r, s) in enumerate(zip(pts, size)):
        ax.scatter([r["latency_ms"]], [r["pdms"]], s=s, alpha=0.6, color=PALETTE[k % len(PALETTE)],
                   edgecolors="black", linewidths=0.5)
        ax.annotate(r["model"], (r["latency_ms"], r["pdms"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    if pts:
        ax.set_xscale("log")
    ax.set_xlabel("latency, batch 1 [ms] (log)")
    ax.set_ylabel("PDMS")
    ax.grid(alpha=0.3)
    ax.set_title("marker area ~ parameters", fontsize=8)
    return fig_uri(fig)


def final_numbers(panels: dict[str, dict[str, float]]) -> str:
    """One bar panel per (stage, metric): the final validation number of every run that has it."""
    fig = Figure(figsize=(3.3 * len(panels), 3.2))
    for k, (title, vals) in enumerate(panels.items()):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.bar(range(len(vals)), list(vals.values()), color=PALETTE[k % len(PALETTE)])
        ax.set_xticks(range(len(vals)), list(vals), rotation=40, ha="right", fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig_uri(fig)


def teacher_bars(teachers: dict[str, dict]) -> str:
    """Token accuracy per family for every evaluated teacher, with its majority-code and blank-image controls."""
    families = sorted({f for m in teachers.values() for f in m["by_family"]})
    width = max(4.0, 1.1 * len(families) * max(1, len(teachers)) ** 0.5) + 2.8  # inches: plot + legend column
    fig = Figure(figsize=(width, 3.2))
    ax = fig.add_axes((0.6 / width, 0.22, 1 - 3.3 / width, 0.7))
    bar = 0.8 / max(1, len(teachers))
    x = np.arange(len(families))
    for k, (name, m) in enumerate(teachers.items()):
        color = PALETTE[k % len(PALETTE)]
        ax.bar(x - 0.4 + (k + 0.5) * bar, [m["by_family"].get(f, np.nan) for f in families], bar, color=color,
               label=f"{name} (all {m['token_accuracy']:.2f})")
        for key, style in (("baseline_token_accuracy", "--"), ("blind_token_accuracy", ":")):
            if m.get(key) is not None:
                ax.axhline(m[key], color=color, ls=style, lw=1)
    ax.plot([], [], "k--", lw=1, label="majority code")
    ax.plot([], [], "k:", lw=1, label="blank images")
    ax.set_xticks(x, families, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(-0.02, 1.05)  # a control at 0 stays visible
    ax.set_ylabel("token accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig_uri(fig)


def lam_code_figures(run, data: Path, tmp: Path) -> dict[str, str]:
    """The LAM report's figures (``latentvla.lam.figures``) from the run's label store of ``data``'s test split:
    {"code_usage" | "codes_ego" | "codes_env": data URI}. Raises FileNotFoundError without labels for ``data``."""
    import yaml

    from latentvla.config import from_dict
    from latentvla.data.store import open_store
    from latentvla.lam.configuration import LAMConfig
    from latentvla.lam.figures import code_examples_figure, code_usage_figure
    from latentvla.runtime.io import read_json

    store = open_store(data, verify_blobs=False)
    labels_path = run.path / "labels" / f"{store.digest()}.json"
    if not labels_path.is_file():
        raise FileNotFoundError(f"no label store of {data} in {run.path / 'labels'} (`latentvla lam label`)")
    cfg = from_dict(LAMConfig, yaml.safe_load(run.config_text))
    doc = read_json(labels_path)
    tokens = [t for t in store.tokens("test") if t in doc["scenes"]]
    if not tokens:
        raise FileNotFoundError(f"the label store {labels_path} has no test scenes")
    shape = (len(tokens), doc["windows"], doc["num_queries"])
    codes = {k: np.asarray([doc["scenes"][t][k] for t in tokens], dtype=np.int64).reshape(shape)
             for k in ("ego", "env")}
    sizes = {"ego": cfg.model.ego.codebook_size, "env": cfg.model.env.codebook_size}
    out = {"code_usage": file_uri(code_usage_figure(codes, sizes, tmp / "code_usage.png"))}
    for name in ("ego", "env"):
        out[f"codes_{name}"] = file_uri(code_examples_figure(store, cfg, tokens, codes[name], sizes[name],
                                                             tmp / f"codes_{name}.png"))
    return out


def read_curves(path: Path) -> dict[str, tuple[list[float], list[float]]]:
    """{metric: (steps, values)} of a Lightning ``CSVLogger`` metrics.csv (blank cells: not logged that row)."""
    import csv

    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            x = float(row.get("step") or i)
            for k, v in row.items():
                if k in ("step", "epoch") or v in (None, ""):
                    continue
                try:
                    y = float(v)
                except ValueError:
                    continue
                series.setdefault(k, ([], []))[0].append(x)
                series[k][1].append(y)
    return series


def curves_figure(series: dict[str, tuple[list[float], list[float]]]) -> str:
    """Training (left) and validation (right, when logged) curves against the step."""
    groups = {"train": {k: v for k, v in series.items() if not k.startswith("val")},
              "validation": {k: v for k, v in series.items() if k.startswith("val")}}
    groups = {g: s for g, s in groups.items() if s}
    fig = Figure(figsize=(4.2 * len(groups), 2.8))
    for k, (title, s) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), k + 1)
        for j, (name, (x, y)) in enumerate(sorted(s.items())):
            ax.plot(x, y, lw=1.2, marker="o" if len(x) < 30 else None, ms=2.5, color=PALETTE[j % len(PALETTE)],
                    label=name)
        ax.set_xlabel("step", fontsize=7)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig_uri(fig)
