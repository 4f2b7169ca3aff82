"""The report page: inline CSS, no script, no external resource; small helpers that return escaped HTML strings.

``SECTIONS`` fixes the order and the headings (the issue's order, the comparison table first)."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

SECTIONS: tuple[tuple[str, str], ...] = (
    ("comparison", "Comparison table"),
    ("families", "PDMS by scene family"),
    ("latency", "Latency vs PDMS"),
    ("training", "Training curves"),
    ("lam", "Latent action codes"),
    ("teacher", "Teacher token accuracy by family"),
    ("gallery", "Failure gallery"),
    ("closed-loop", "Closed-loop results"),
    ("provenance", "Provenance"),
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1280px;padding:8px 20px 40px;color:#1d1d1f;font-size:14px;line-height:1.4}
h1{font-size:20px;margin:6px 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:2px solid #d0d7de;
padding-bottom:3px}h3{font-size:14px;margin:16px 0 6px}
.sub{color:#57606a;font-size:12px;margin:0 0 6px}nav{font-size:12px;margin:0 0 8px}nav a{margin-right:10px}
table{border-collapse:collapse;font-size:12.5px;margin:4px 0 8px}
th,td{border:1px solid #d0d7de;padding:2px 7px;text-align:right;white-space:nowrap}
th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}tr.ref td{color:#57606a}
.na{color:#8a4b08;background:#fff8e6;border-left:3px solid #e3a008;padding:3px 8px;margin:4px 0}
.cap{color:#57606a;font-size:12px;margin:2px 0 8px}
img{max-width:100%;height:auto;border:1px solid #e1e4e8}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;border:1px solid #d0d7de;border-radius:4px;padding:6px;width:560px;background:#fafbfc}
figcaption{font-size:12px}pre{font-size:11px;background:#f6f8fa;padding:6px;overflow-x:auto;margin:4px 0;
white-space:pre-wrap}details{margin:2px 0}summary{cursor:pointer}
"""


def esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def num(v: object, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.{digits}f}"
    return str(v)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], row_classes: Sequence[str] | None = None,
          cls: str = "") -> str:
    """A table of already-formatted cells (strings are escaped; use ``Raw`` for HTML cells)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        rc = f' class="{esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{rc}>" + "".join(f"<td>{c if isinstance(c, Raw) else esc(c)}</td>" for c in row) + "</tr>")
    c = f' class="{esc(cls)}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Raw(str):
    """A string that is already HTML."""


def p(text: str, cls: str = "") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def na(why: str) -> str:
    """The line a section shows for a missing artifact."""
    return p(f"not available: {why}", "na")


def cap(text: str) -> str:
    return p(text, "cap")


def img(uri: str, alt: str) -> str:
    if not uri.startswith("data:image/png;base64,"):
        raise ValueError("the report embeds PNG data URIs only")
    return f'<img src="{uri}" alt="{esc(alt)}">'


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def h3(text: str, anchor: str = "") -> str:
    a = f' id="{esc(anchor)}"' if anchor else ""
    return f"<h3{a}>{esc(text)}</h3>"


def page(title: str, subtitle: str, bodies: dict[str, str]) -> str:
    """The whole document: title, one line of in-page links, then every section of ``SECTIONS`` in order."""
    nav = " ".join(f'<a href="#{sid}">{esc(name)}</a>' for sid, name in SECTIONS)
    parts = [f"<h1>{esc(title)}</h1>", p(subtitle, "sub"), f"<nav>{nav}</nav>"]
    for sid, name in SECTIONS:
        parts.append(f'<section id="{sid}"><h2>{esc(name)}</h2>{bodies.get(sid) or na("nothing to show")}</section>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
