"""`latentvla report`: one self-contained HTML report built from real artifacts of the session's tiny world (LAM,
teacher) plus a small comparison table scored here (constant velocity, the teacher, a TransFuser full model fused
with it and its distilled student, log replay). Checked: the HTML parses with every element closed,
every embedded image decodes, nothing outside the file is referenced, the comparison table comes first, every
section is there in the issue's order, the gallery shows each model's worst scenes with the scorer's reasons, and
the closed-loop section sets open-loop PDMS beside the closed-loop score (from the table's closed-loop columns) and
shows closed-loop result files, or says "not run". A headless-Chromium screenshot of the first screen
runs where Chromium is installed."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser

import cv2
import numpy as np
import pytest

from latentvla.report.check import check_report, parse_report
from latentvla.report.closed_loop import CLOSED_LOOP_NOT_RUN
from latentvla.report.html import SECTIONS

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("constant-velocity", "teacher", "transfuser-full", "transfuser-distilled", "log-replay")
WORST = 2
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def experiment(tiny_world, lam_run, teacher_run, planner_cache_root, cache_dir, tmp_path_factory):
    """An `experiment table`-style output directory (table.json, runs.json, scores/) for ``MODELS``, built with the
    table module's own scoring on runs trained here at the quick profile, and the report of it."""
    from rich.console import Console

    from latentvla.experiment.runs import Plan, train_planner
    from latentvla.experiment.stats import build_table
    from latentvla.experiment.table import publish, score_models
    from latentvla.planner.sources import Sources
    from latentvla.report.build import build_report
    from latentvla.runtime.io import write_json
    from latentvla.vla.evaluate import evaluate

    out = tmp_path_factory.mktemp("report") / "exp"
    plan = Plan(tiny_world, out, "quick", workers=1, quiet=True, planner_cache_root=planner_cache_root,
                metric_cache_root=cache_dir, lam_cache_root=lam_run[1])
    shutil.copytree(teacher_run["lam"], out / "lam")  # the LAM run with its label store (no `lam report` figures)
    teacher = out / "vla" / "teacher"
    shutil.copytree(teacher_run["run"], teacher)
    evaluate(teacher, tiny_world, quiet=True, cache_root=planner_cache_root, lam_cache_root=lam_run[1])
    planner = out / "planner"
    runs = {"transfuser-full": train_planner(plan, planner / "transfuser-full", "transfuser", 0,
                                             Sources(teacher=teacher))}
    runs["transfuser-distilled"] = train_planner(plan, planner / "transfuser-distilled", "transfuser", 0,
                                                 Sources(distill_from=runs["transfuser-full"]))
    console = Console(stderr=True, quiet=True)
    by_model = {m: {0: teacher if m == "teacher" else runs.get(m)} for m in MODELS}
    table = build_table(score_models(plan, by_model, 1, console), n_boot=200)
    publish(table, plan, 1, "table", console)
    write_json(out / "runs.json", {"lam": str(out / "lam"), "teachers": {"teacher": str(teacher)},
                                   "planner": {f"{m}.seed0": str(p) for m, p in runs.items()}})
    start = time.time()
    report = build_report([out], out / "report.html", worst=WORST, metric_cache_root=cache_dir,
                          planner_cache_root=planner_cache_root)
    return {"out": out, "report": report, "seconds": time.time() - start, "table": table}


def sections(text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, flags=re.S))


class _Strict(HTMLParser):
    """The stdlib parser with a strict handler: any end tag that does not close the innermost open element, or an
    element left open at the end, fails."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "source", "wbr", "col", "area", "base", "embed", "track"}

    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.srcs: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src") or "")
        self.urls += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1] if self.open else None}>"
        self.open.pop()


def test_report_parses_and_is_self_contained(experiment):
    text = experiment["report"].read_text()
    parser = _Strict()
    parser.feed(text)
    parser.close()
    assert parser.open == [], f"unclosed elements: {parser.open}"
    assert len(parser.srcs) >= 4 + WORST * len(MODELS)
    for src in parser.srcs:  # every image is an embedded PNG that decodes
        assert src.startswith("data:image/png;base64,")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 10 and img.shape[1] > 10 and img.std() > 1
    for url in parser.urls:  # only in-page links and embedded images
        assert url.startswith(("#", "data:image/png;base64,")), url
    css = "".join(re.findall(r"<style>(.*?)</style>", text, flags=re.S)) + " ".join(re.findall(r'style="([^"]*)"', text))
    assert not re.search(r"(https?:)?//|url\(|@import", css)
    assert not re.search(r"<(script|link|iframe)\b", text)
    assert check_report(experiment["report"]) == []  # the package's own checker agrees


def test_comparison_table_first_then_every_section_in_order(experiment):
    parser = parse_report(experiment["report"].read_text())
    assert parser.order[:2] == ["h2:" + SECTIONS[0][1], "table"]  # the comparison table opens the report
    assert [h for h in parser.order if h.startswith("h2:")] == ["h2:" + name for _, name in SECTIONS]
    body = sections(experiment["report"].read_text())
    assert list(body) == [sid for sid, _ in SECTIONS]
    rows = re.findall(r"<tr[^>]*><td>([^<]+)</td>", body["comparison"].split("</table>")[0])
    assert rows == list(MODELS)
    assert "no latency: log-replay" in body["latency"]  # the scatter's caption names the rows it cannot place
    assert body["families"].count("<img") == 1 and body["latency"].count("<img") == 1


def test_sections_show_the_runs_artifacts(experiment):
    body = sections(experiment["report"].read_text())
    # every trainer logs its curves (RUN/curves/<stage>/metrics.csv), drawn per run
    assert "curves/planner/metrics.csv" in body["training"] and "planner/transfuser-full" in body["training"]
    assert "curves/teacher/metrics.csv" in body["training"] and "curves/stage2/metrics.csv" in body["training"]
    assert "vla/teacher" in body["training"] and "lam" in body["training"]
    # LAM figures drawn from the label store (no `lam report` ran): usage histogram + one strip per codebook
    assert body["lam"].count("<img") == 3 and "label store" in body["lam"]
    doc = json.loads((experiment["out"] / "vla" / "teacher" / "metrics.json").read_text())
    assert body["teacher"].count("<img") == 1
    for fam in doc["by_family"]:
        assert f"<th>{fam}</th>" in body["teacher"]
    assert "dataset digest" in body["provenance"] and "config.yaml" in body["provenance"]
    assert "host: transfuser" in body["provenance"]  # the configs themselves


def test_closed_loop_beside_open_loop(experiment):
    """Every row that can drive has closed-loop cells (log replay as the world's expert), pdm-closed has none; the
    report ranks the models both ways and says whether the orderings agree."""
    closed = sections(experiment["report"].read_text())["closed-loop"]
    rows = {r["model"]: r for r in experiment["table"]["rows"]}
    for model in MODELS:
        assert rows[model]["closed_loop_score"] is not None and rows[model]["red_light_violations"] is not None
        assert f"<tr><td>{model}</td><td>{rows[model]['pdms']:.3f}</td><td>{rows[model]['closed_loop_score']:.3f}" \
            in closed
        assert (experiment["out"] / "closed_loop" / f"{model}.json").is_file()
    assert rows["log-replay"]["closed_loop_score"] > 0.9  # the expert drives its own world safely
    assert "Spearman" in closed and ("agree on the ordering" in closed or "disagree" in closed)
    assert closed.count("closed_loop/") == len(MODELS)  # one per-family table per model's result file
    assert CLOSED_LOOP_NOT_RUN not in closed


def test_gallery_worst_scenes_with_trajectories_and_reasons(experiment):
    out = experiment["out"]
    gallery = sections(experiment["report"].read_text())["gallery"]
    assert "student = transfuser-distilled" in gallery and "full = transfuser-full" in gallery
    assert "teacher = teacher" in gallery
    for model in MODELS:
        rows = json.loads((out / "scores" / f"{model}.seed0.json").read_text())["pdms"]
        scores = sorted((r["pdms"] if r["valid"] else 0.0, i) for i, r in enumerate(rows))
        part = gallery.split(f'id="gallery-{model}"')[1].split("<h3")[0]
        assert part.count("<figure>") == WORST
        worst = rows[scores[0][1]]["token"]
        assert f"{model} on scene {worst}" in part
        assert part.count("EP: ") == WORST and part.count("NC: ") >= WORST  # --explain reasons per scene
        # the explanation recomputes the scored plan: its PDMS is the table's per-scene PDMS
        line = re.search(rf"scene {worst}: [^<]*pdms=([0-9.]+)", part)
        assert line and float(line.group(1)) == pytest.approx(scores[0][0], abs=2e-3)
    assert experiment["seconds"] < 60


def test_closed_loop_results_and_missing_artifacts(experiment, tmp_path):
    from latentvla.report.build import build_report

    loop = tmp_path / "loop"
    loop.mkdir()
    doc = json.loads((experiment["out"] / "closed_loop" / "constant-velocity.json").read_text())
    doc["by_family"]["merge"] = {**doc["mean"], "scenes": 3, "closed_loop_score": 0.625}
    (loop / "closed_loop_test.json").write_text(json.dumps(doc))
    report = build_report([loop, experiment["out"] / "planner" / "transfuser-full"], tmp_path / "r.html",
                          explain=False)
    assert check_report(report) == []
    body = sections(report.read_text())
    assert "<td>merge</td><td>3</td><td>0.625</td>" in body["closed-loop"]
    assert "agent constant-velocity, reactive" in body["closed-loop"]
    assert CLOSED_LOOP_NOT_RUN not in body["closed-loop"]
    alone = build_report([experiment["out"] / "planner" / "transfuser-full"], tmp_path / "alone.html", explain=False)
    assert CLOSED_LOOP_NOT_RUN in sections(alone.read_text())["closed-loop"]
    for sid in ("comparison", "families", "latency", "lam", "teacher", "gallery"):
        assert "not available: " in body[sid], sid
    assert "transfuser-full" in body["training"] and "transfuser-full" in body["provenance"]


def test_training_curves_from_a_csv_logger_file(experiment, tmp_path):
    """Any Lightning CSVLogger metrics.csv inside a run directory is drawn (here a hand-written one replaces the
    run's own curves); a run without one says so."""
    from latentvla.report.build import build_report

    run = tmp_path / "transfuser-full"
    shutil.copytree(experiment["out"] / "planner" / "transfuser-full", run, ignore=shutil.ignore_patterns("curves"))
    bare = build_report([run], tmp_path / "bare.html")
    assert "not available: per-step / per-epoch curves" in sections(bare.read_text())["training"]
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_text("epoch,step,train/loss,val/ade\n0,0,5.0,\n0,1,4.0,\n0,1,,3.0\n"
                                              "1,3,3.0,\n1,3,,2.5\n")
    report = build_report([run], tmp_path / "r.html")
    training = sections(report.read_text())["training"]
    assert check_report(report) == [] and "logs/metrics.csv" in training and "not available" not in training
    assert training.count("<img") == 2  # the curves and the final numbers


def test_cli_and_bad_paths(experiment, runner, tmp_path):
    import typer

    from latentvla.report.cli import report_command

    app = typer.Typer()
    app.command("report")(report_command)
    app.command("noop")(lambda: None)  # a group, as in latentvla.cli
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", "--runs", str(experiment["out"] / "lam"), str(experiment["out"] / "vla"),
                              "--out", str(out), "--no-explain", "--worst", "1"])
    assert res.exit_code == 0, res.output
    assert check_report(out) == [] and "<td>teacher/blind</td>" in out.read_text()  # both PATHs after one --runs
    res = runner.invoke(app, ["report", "--runs", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 2 and "nope" in res.output and "no such" in res.output
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["report", "--runs", str(empty), "--out", str(out)])
    assert res.exit_code == 2 and "holds no recognised artifact" in res.output


def test_first_screen_in_headless_chromium(request, tmp_path):
    """Skipped unless a Chromium / Chrome binary is on PATH (`.ci/run` installs Debian's chromium when it can)."""
    browser = next((b for b in CHROMIUM if shutil.which(b)), None)
    if browser is None:
        pytest.skip(f"no headless browser on PATH (looked for {', '.join(CHROMIUM)})")
    report = request.getfixturevalue("experiment")["report"]
    shot = tmp_path / "first_screen.png"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--screenshot={shot}", "--window-size=1280,900", report.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    img = cv2.imread(str(shot))
    assert img is not None, f"{browser} wrote no screenshot"
    assert img.shape[:2] == (900, 1280)
    ink = (img.min(axis=2) < 200).mean(axis=1)  # share of non-white pixels per row
    assert (ink > 0.02).sum() > 100  # the title, the links and the comparison table fill the first screen
