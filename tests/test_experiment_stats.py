"""`latentvla experiment table` statistics: hand-computed golden values for the means, std, bootstrap, recovery,
the table contract, CSV/JSON output and the rich rendering. Pure numpy, no data or training (runs in seconds)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rich.console import Console

from latentvla.experiment.stats import (
    CSV_COLUMNS,
    PAIRS,
    RECOVERY,
    build_table,
    human_count,
    model_row,
    paired_bootstrap,
    recovery,
    render_tables,
    scene_matrix,
    write_table,
)

TOKENS = ["t0", "t1", "t2", "t3"]
FAMILIES = ["a", "a", "b", "b"]


def _rows(pdms, tokens=TOKENS, families=FAMILIES, invalid=()):
    """Per-scene rows whose sub-scores all equal the scene's pdms (invalid scenes carry None, as NAVSIM's NaN)."""
    out = []
    for t, f, p in zip(tokens, families, pdms):
        ok = t not in invalid
        out.append({"token": t, "family": f, "valid": ok,
                    **{k: (p if ok else None) for k in ("nc", "dac", "ttc", "ep", "c", "pdms")}})
    return out


GOLDEN = [  # token, family, valid, nc, dac, ttc, ep, c, pdms
    ("t0", "a", True, 1.0, 1.0, 1.0, 0.8, 1.0, 0.9),
    ("t1", "a", True, 1.0, 1.0, 0.0, 0.6, 1.0, 0.5),
    ("t2", "b", True, 0.5, 1.0, 1.0, 0.4, 1.0, 0.3),
    ("t3", "b", False, None, None, None, None, None, float("nan")),
]


def _golden_rows():
    keys = ("token", "family", "valid", "nc", "dac", "ttc", "ep", "c", "pdms")
    return [dict(zip(keys, r)) for r in GOLDEN]


def test_model_row_golden_means_invalid_as_zero_and_by_family():
    row = model_row("m", [_golden_rows()], params=1_234_567, latency_ms=3.5)
    assert list(row) == ["model", "nc", "dac", "ttc", "c", "ep", "pdms", "pdms_std", "epdms", "params",
                         "latency_ms", "by_family", "closed_loop_score", "red_light_violations"]
    assert row["closed_loop_score"] is None and row["red_light_violations"] is None  # closed loop not run
    cl = model_row("m", [_golden_rows()], 1, None, closed_loop={"closed_loop_score": 0.25, "red_light_violations": 2})
    assert cl["closed_loop_score"] == 0.25 and cl["red_light_violations"] == 2.0
    # the invalid scene t3 counts as 0 on every sub-score
    assert row["nc"] == pytest.approx(2.5 / 4)
    assert row["dac"] == pytest.approx(3 / 4)
    assert row["ttc"] == pytest.approx(2 / 4)
    assert row["ep"] == pytest.approx(1.8 / 4)
    assert row["c"] == pytest.approx(3 / 4)
    assert row["pdms"] == pytest.approx(1.7 / 4)
    assert row["pdms_std"] == 0.0 and row["epdms"] is None
    assert row["params"] == 1_234_567 and row["latency_ms"] == 3.5
    assert row["by_family"] == pytest.approx({"a": 0.7, "b": 0.15})
    assert list(row["by_family"]) == ["a", "b"]


def test_model_row_seeds_std_and_epdms():
    seeds = [[0.2, 0.4], [0.6, 0.8], [0.1, 0.3]]  # per-seed means 0.3, 0.7, 0.2
    rows = [_rows(p, TOKENS[:2], ["z", "y"]) for p in seeds]
    ep = [[{"token": "t0", "valid": True, "epdms": 0.5}, {"token": "t1", "valid": False, "epdms": float("nan")}]]
    row = model_row("m", rows, params=10, latency_ms=None, epdms_rows_by_seed=ep)
    assert row["pdms"] == pytest.approx(0.4)
    assert row["pdms_std"] == pytest.approx(np.std([0.3, 0.7, 0.2], ddof=1))
    assert row["pdms_std"] == pytest.approx(math.sqrt(0.07))
    assert row["epdms"] == pytest.approx(0.25)
    assert row["by_family"] == pytest.approx({"y": 0.5, "z": 0.3})
    assert list(row["by_family"]) == ["y", "z"]
    assert row["latency_ms"] is None
    bad_ep = [[{"token": "t0", "valid": True, "epdms": 0.5}, {"token": "tX", "valid": True, "epdms": 0.5}]]
    with pytest.raises(ValueError, match="tX"):
        model_row("m", rows, 10, None, bad_ep)


def test_scene_matrix_invalid_zero_and_token_mismatch():
    tokens, mat = scene_matrix([_rows([0.1, 0.2, 0.3, 0.4], invalid={"t1"}), _rows([0.5, 0.6, 0.7, 0.8])])
    assert tokens == TOKENS
    np.testing.assert_allclose(mat, [[0.1, 0.0, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    swapped = _rows([0.1] * 4, tokens=["t0", "t2", "t1", "t3"])
    with pytest.raises(ValueError, match="'t2'"):
        scene_matrix([_rows([0.1] * 4), swapped])
    with pytest.raises(ValueError, match="'t3'"):  # a seed that lacks the last scene names it
        scene_matrix([_rows([0.1] * 4), _rows([0.1] * 3)])
    with pytest.raises(ValueError, match="'t9'"):
        scene_matrix([_rows([0.1] * 4), _rows([0.1] * 4, tokens=["t0", "t1", "t2", "t9"])])
    with pytest.raises(ValueError, match="t1"):  # a valid scene without a score is a bug, not a zero
        scene_matrix([[{"token": "t1", "family": "a", "valid": True, "pdms": None}]])
    _, m = scene_matrix([[{"token": "t1", "family": "a", "valid": "false", "pdms": ""}]])  # CSV strings
    assert m.tolist() == [[0.0]]


def test_paired_bootstrap_identical_and_constant_shift():
    rng = np.random.default_rng(1)
    b = rng.uniform(0, 1, size=(3, 50))
    assert paired_bootstrap(b, b.copy(), n_boot=500) == (0.0, 0.0, 0.0)
    m, lo, hi = paired_bootstrap(b + 0.1, b, n_boot=500)
    assert (m, lo, hi) == pytest.approx((0.1, 0.1, 0.1), abs=1e-12)


def test_paired_bootstrap_asymmetric_golden():
    # d = [0, 0, 0, 1]: mean 0.25; a resample's mean is k/4 with k ~ Binomial(4, 1/4): P(k=0)=0.32 so the
    # 2.5% point is 0; P(k>=3)=0.051, P(k=4)=0.004, so the 97.5% point is 0.75
    a, b = np.array([0.2, 0.4, 0.6, 1.0]), np.array([0.2, 0.4, 0.6, 0.0])
    m, lo, hi = paired_bootstrap(a, b, n_boot=10000, seed=3)
    assert m == 0.25 and lo == 0.0 and hi == 0.75
    assert lo <= m <= hi


def test_paired_bootstrap_averages_seeds_per_scene_then_resamples_scenes():
    a = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.5]])
    b = np.zeros((2, 3))
    m, lo, hi = paired_bootstrap(a, b, n_boot=2000)  # per-scene d = [0.5, 0, 0.5]
    assert m == pytest.approx(1 / 3) and 0.0 <= lo <= m <= hi <= 0.5


def test_paired_bootstrap_deterministic_and_seed_dependent():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(2, 200)), rng.uniform(size=(2, 200))
    r1 = paired_bootstrap(a, b, n_boot=1000, seed=5)
    assert r1 == paired_bootstrap(a, b, n_boot=1000, seed=5)
    assert r1[1:] != paired_bootstrap(a, b, n_boot=1000, seed=6)[1:]
    assert r1[0] == paired_bootstrap(a, b, n_boot=1000, seed=6)[0]


def test_log_bootstrap_golden_and_singleton_logs_equal_the_scene_bootstrap():
    # d = [1, 1, 1, 0, 0, 0] from two logs of three scenes: a log resample's mean is 0, 1/2 or 1 (p 1/4, 1/2, 1/4),
    # so the 95% interval is [0, 1]; resampling scenes gives k/6 with k ~ Binomial(6, 1/2): P(k=0) = 1/64 < 2.5%
    # < P(k<=1) = 7/64, so [1/6, 5/6]: scenes of one log are not independent evidence.
    a, b = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), np.zeros(6)
    assert paired_bootstrap(a, b, n_boot=20000, seed=1, groups=np.array(["A"] * 3 + ["B"] * 3)) == (0.5, 0.0, 1.0)
    m, lo, hi = paired_bootstrap(a, b, n_boot=20000, seed=1)
    assert (m, lo, hi) == pytest.approx((0.5, 1 / 6, 5 / 6))
    # unequal logs: the statistic is the scene-weighted mean of the drawn logs (AA -> 1, AB / BA -> 1/3, BB -> 0)
    m, lo, hi = paired_bootstrap(np.array([1.0, 0.0, 0.0]), np.zeros(3), n_boot=20000, groups=["A", "B", "B"])
    assert m == pytest.approx(1 / 3) and (lo, hi) == (0.0, 1.0)
    # one scene per log, listed in scene order (any labels): the same draws as the scene bootstrap, exactly
    rng = np.random.default_rng(2)
    a, b = rng.uniform(size=(3, 40)), rng.uniform(size=(3, 40))
    assert paired_bootstrap(a, b, n_boot=3000, seed=4, groups=[f"log{99 - i}" for i in range(40)]) == \
        paired_bootstrap(a, b, n_boot=3000, seed=4)
    with pytest.raises(ValueError, match="one label per scene"):
        paired_bootstrap(a, b, groups=["x"] * 39)


def test_paired_bootstrap_shape_errors():
    with pytest.raises(ValueError, match="seeds"):
        paired_bootstrap(np.zeros((3, 5)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError):
        paired_bootstrap(np.zeros((1, 1, 5)), np.zeros((1, 1, 5)))


def test_paired_bootstrap_full_size_is_fast_and_narrow():
    rng = np.random.default_rng(0)
    b = rng.uniform(size=(3, 2000))
    a = np.clip(b + rng.normal(0.02, 0.05, size=b.shape), 0, 1)
    m, lo, hi = paired_bootstrap(a, b)  # 10k resamples x 2000 scenes, chunked
    assert lo < m < hi and hi - lo < 0.01


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 1)),
       st.integers(0, 2**31 - 1), st.floats(-0.5, 0.5))
def test_paired_bootstrap_properties(b, seed, shift):
    a = np.clip(b + shift, 0, 1)
    m, lo, hi = paired_bootstrap(a, b, n_boot=400, seed=seed)
    d = a - b
    assert m == float(np.mean(a - b))
    assert lo <= hi
    assert d.min() - 1e-12 <= lo and hi <= d.max() + 1e-12
    assert lo - 1e-9 <= m <= hi + 1e-9


def test_recovery_golden():
    assert recovery(0.9, 0.85, 0.8) == pytest.approx(0.5)
    assert recovery(0.8, 0.85, 0.8) is None
    assert recovery(0.9, 0.75, 0.8) == pytest.approx(-0.5)


def _models(seeds=3):
    rng = np.random.default_rng(0)
    toks = [f"s{i}" for i in range(6)]
    fams = ["x", "y"] * 3
    base = {"full": 0.9, "distilled": 0.85, "ipad": 0.8}
    models = {}
    for name, level in base.items():
        noise = rng.normal(0, 0.01, size=(seeds, 6))
        noise -= noise.mean()  # exact model means, so the recovery is a hand value
        models[name] = {"rows": [_rows(level + noise[s], toks, fams) for s in range(seeds)],
                        "params": 1_500_000, "latency_ms": 2.0}
    models["ref"] = {"rows": [_rows([0.7] * 6, toks, fams)], "params": 0, "latency_ms": None}
    return models


def test_build_table_contract_pairs_recovery_and_single_seed_reference():
    models = _models()
    pairs = {**PAIRS, "full-ref": ("full", "ref")}
    t = build_table(models, pairs, RECOVERY, split="test", n_boot=500)
    assert set(t) == {"metric", "split", "scenes", "seeds", "rows", "paired", "paired_missing", "recovery"}
    assert t["metric"] == "pdms-v1.1" and t["split"] == "test" and t["scenes"] == 6 and t["seeds"] == 3
    assert [r["model"] for r in t["rows"]] == ["full", "distilled", "ipad", "ref"]
    assert set(t["paired"]) == {"full-ipad", "distilled-ipad", "full-distilled", "full-ref"}
    assert t["paired_missing"] == ["ipad-aux-ipad", "ipad-wide-ipad"]
    assert t["paired"]["full-ipad"][0] == pytest.approx(0.1)
    assert t["paired"]["full-ref"][0] == pytest.approx(0.2)  # the single ref row reused for every seed
    for m, lo, hi in t["paired"].values():
        assert lo <= m <= hi
    assert t["recovery"] == pytest.approx(0.5)
    assert build_table(models, {}, None, n_boot=10)["recovery"] is None
    assert build_table({"ref": models["ref"]}, PAIRS, RECOVERY, n_boot=10)["recovery"] is None


def test_build_table_log_clustered_pairs():
    models = _models()
    t = build_table(models, PAIRS, RECOVERY, n_boot=500)
    logs = {f"s{i}": f"log{i // 2}" for i in range(6)}  # three logs of two scenes
    tl = build_table(models, PAIRS, RECOVERY, n_boot=500, logs=logs)
    assert tl["paired"] == t["paired"] and tl["logs"] == 3 and set(tl["paired_by_log"]) == set(t["paired"])
    for name, (m, lo, hi) in tl["paired_by_log"].items():
        assert m == t["paired"][name][0] and lo <= m <= hi
    assert "the 3 logs" in str(render_tables(tl)[0].caption)
    with pytest.raises(ValueError, match="'s5' has no log"):
        build_table(models, PAIRS, RECOVERY, n_boot=10, logs={k: v for k, v in logs.items() if k != "s5"})


def test_build_table_aligns_tokens_and_rejects_mismatches():
    models = _models(seeds=2)
    shuffled = {k: dict(v) for k, v in models.items()}
    shuffled["ipad"]["rows"] = [list(reversed(rows)) for rows in models["ipad"]["rows"]]
    t1 = build_table(models, PAIRS, RECOVERY, n_boot=200)
    t2 = build_table(shuffled, PAIRS, RECOVERY, n_boot=200)
    assert t1["paired"] == t2["paired"]  # pairs are matched by token, not by position
    bad = {k: dict(v) for k, v in models.items()}
    bad["distilled"]["rows"] = [[{**r, "token": "zz" if r["token"] == "s5" else r["token"]} for r in rows]
                                for rows in models["distilled"]["rows"]]
    with pytest.raises(ValueError, match="'distilled'"):
        build_table(bad, PAIRS, RECOVERY, n_boot=10)
    three = _models(seeds=3)
    mixed = {"full": three["full"], "ipad": models["ipad"]}  # 3 seeds vs 2 seeds
    with pytest.raises(ValueError, match="seeds"):
        build_table(mixed, PAIRS, RECOVERY, n_boot=10)


def test_write_table_round_trip(tmp_path):
    t = build_table(_models(), PAIRS, RECOVERY, n_boot=200)
    csv_path, json_path = write_table(t, tmp_path / "out", stem="exp")
    assert csv_path.name == "exp.csv" and json_path.name == "exp.json"
    text = csv_path.read_text()
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    with open(csv_path) as f:
        back = list(csv.DictReader(f))
    assert [r["model"] for r in back] == ["full", "distilled", "ipad", "ref"]
    full = t["rows"][0]
    assert float(back[0]["pdms"]) == round(full["pdms"], 6)
    assert back[0]["params"] == "1500000" and back[0]["latency_ms"] == "2.0"
    assert back[0]["epdms"] == "" and back[3]["latency_ms"] == ""
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(t))


def test_render_tables():
    t = build_table(_models(), PAIRS, RECOVERY, n_boot=200)
    main, fam = render_tables(t)
    console = Console(record=True, width=200)
    console.print(main)
    console.print(fam)
    out = console.export_text()
    assert "distilled" in out and "recovery" in out and "full-ipad" in out
    assert "1.5M" in out and "0.500" in out
    assert "x" in [c.header for c in fam.columns] and "y" in [c.header for c in fam.columns]


def test_tables_print_whole_into_a_log_file():
    """A non-terminal console (a log) gets the tables at full width, not cut to 80 columns."""
    import io

    from latentvla.experiment.table import print_tables

    buf = io.StringIO()
    print_tables(render_tables(build_table(_models(), PAIRS, RECOVERY, n_boot=200)), Console(file=buf))
    out = buf.getvalue()
    assert "distilled" in out and "model" in out and "…" not in out


def test_human_count():
    assert [human_count(n) for n in (0, 999, 1500, 1_234_567, 2_000_000_000)] == ["0", "999", "1.5K", "1.2M",
                                                                                  "2.0B"]
