"""Tables and figures: exact cells (display-scaled once), the paper beside ours, every cell traced."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from drpo.eval import paper as P
from drpo.eval import tables as T
from drpo.io import write_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def r(table, method, test_set, metric, value, source, ci=(None, None)):
    return {"table": table, "method": method, "test_set": test_set, "metric": metric, "value": value,
            "ci_low": ci[0], "ci_high": ci[1], "source": source}


RESULTS = pd.DataFrame([
    # main SD-Turbo: raw values (PickScore cosine, ImageReward raw, AES raw)
    r("sd_turbo_main", "DrPO", "pickapic_test_2048", "pickscore", 0.2349, "runs/drpo/pap/scores.parquet", (0.2331, 0.2367)),
    r("sd_turbo_main", "DrPO", "pickapic_test_2048", "aesthetic", 6.4851, "runs/drpo/pap/scores.parquet"),
    r("sd_turbo_main", "drpo", "PartiPrompts", "imagereward", 0.7462, "runs/drpo/parti/scores.parquet"),
    r("sd_turbo_main", "sd_turbo", "pickapic_test_2048", "PS", 0.21876, "runs/base/pap/scores.parquet"),
    r("sd_turbo_main", "my_variant", "parti", "aesthetic", 6.1, "runs/var/parti/scores.parquet"),
    r("sd_turbo_main", "my_variant", "parti", "steps", 1, "configs/var.yaml"),
    r("sd_turbo_main", "my_variant", "parti", "reward_grad", 0, "configs/var.yaml"),
    # main SDXL-Turbo
    r("sdxl_turbo_main", "DPO 1step", "parti", "imagereward", 1.1249, "runs/sdxl_dpo/parti/scores.parquet"),
    # efficiency (seconds) with a breakdown
    r("hpsv3_efficiency", "DRaFT", "", "update_s", 21.0, "timing/draft.json"),
    r("hpsv3_efficiency", "DrPO", "", "update_s", 6.0, "timing/drpo.json"),
    r("hpsv3_efficiency", "DrPO", "", "backward_s", 0.335, "timing/drpo.json"),
    r("hpsv3_efficiency", "DrPO", "", "effective_batch", 192, "timing/drpo.json"),
    r("hpsv3_efficiency", "DrPO", "", "time:reward_score", 1.25, "timing/drpo.json"),
    r("hpsv3_efficiency", "DRaFT", "", "time:reward_score", 8.5, "timing/draft.json"),
    # GenEval accuracies (fractions)
    *[r("geneval", "SD-Turbo", "geneval", f"geneval:{t}", v, "runs/base/geneval/summary.json")
      for t, v in zip(("single_object", "two_object", "counting", "colors", "position", "color_attr"), (0.99, 0.46, 0.34, 0.84, 0.08, 0.09))],
    r("geneval", "SD-Turbo + DrPO", "geneval", "geneval:counting", 0.425, "runs/drpo_geneval/summary.json"),
    # reference objective: CLIP/HPSv2 ×100 here
    r("reference_objective", "Ref. drift loss", "pickapic_v2", "clip", 0.2622, "runs/ref/clip.parquet"),
    r("reference_objective", "Ref. drift loss", "pickapic_v2", "hpsv2", 0.35071, "runs/ref/hps.parquet"),
    r("reference_objective", "no_reference", "pickapic_v2", "aesthetic", 6.603, "runs/noref/aes.parquet"),
    # ablations
    r("ablation_k", "K=16", "pickapic_v2", "pickscore", 0.2324, "runs/k16/ps.parquet"),
    r("ablation_eta", "eta_3e3", "pickapic_v2", "aesthetic", 6.542, "runs/eta3000/aes.parquet"),
    r("ablation_kernel", "Laplacian", "pickapic_v2", "pickscore", 0.2351, "runs/lap/ps.parquet"),
    r("ablation_feature_map", "raw latent", "pickapic_v2", "pickscore", 0.2052, "runs/latent/ps.parquet"),
    # preference shares
    r("qwen3vl_preference", "DPO", "pickapic_v2", "preference", 0.787, "judge/dpo_pap.json", (0.76, 0.81)),
    r("qwen3vl_preference", "SDXL-Turbo", "parti", "preference", 0.714, "judge/base_parti.json", (0.69, 0.74)),
])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables")
    log = out / "drpo_metrics.jsonl"
    write_jsonl(log, [{"step": s, "time": 1000.0 + 3.6 * s, "reward/mean": 0.2188 + 0.00016 * s, "loss": 1.0} for s in range(0, 1001, 50)])
    log2 = out / "draft_metrics.jsonl"
    write_jsonl(log2, [{"step": s, "time": 1000.0 + 10 * s, "reward/mean": 0.2188 + 0.00028 * s} for s in range(0, 1001, 100)])
    written = T.build_all(RESULTS, out, curves={"DrPO": log, "DRaFT": log2})
    return out, written


def csv(out, name):
    return pd.read_csv(out / f"{name}.csv")


def sources(out, name):
    return pd.read_csv(out / f"{name}.sources.csv", keep_default_na=False, na_values=[""])


def test_every_table_written_with_paper_columns_and_sources(built):
    out, written = built
    for name in T.TABLE_BUILDERS:
        assert set(written[name]) == {"csv", "md", "tex", "sources"}, name
        frame = csv(out, name)
        assert any(c.endswith("(paper)") for c in frame.columns), name
        src = sources(out, name)
        assert len(src) == frame.shape[0] * (len(src["column"].unique()))  # one line per cell
        ours = src[src["value"].notna() & (src["value"].astype(str) != "")]
        assert (ours["source"].astype(str).str.len() > 0).all(), name  # every number of ours is traced
        assert "(paper" in (out / f"{name}.md").read_text() and r"\toprule" in (out / f"{name}.tex").read_text()
    assert "![qwen3vl_preference_chart](qwen3vl_preference.png)" in (out / "index.md").read_text()


def test_sd_turbo_main_exact_cells(built):
    out, _ = built
    f = csv(out, "sd_turbo_main").set_index("Method")
    assert list(f.index[:10]) == [row.label for row in P.ROWS["sd_turbo_main"]] and f.index[10] == "my_variant"
    assert f.loc["DrPO", "Pick-a-Pic v2 PS"] == 23.49 and f.loc["DrPO", "Pick-a-Pic v2 PS (paper)"] == 23.49
    assert f.loc["DrPO", "Pick-a-Pic v2 AES"] == 6.485 and f.loc["DrPO", "Parti-Prompts IR"] == 7.46
    assert f.loc["SD-Turbo base", "Pick-a-Pic v2 PS"] == 21.88  # 0.21876 ×100, rounded as the paper prints
    assert pd.isna(f.loc["SD1.5", "Pick-a-Pic v2 PS"]) and f.loc["SD1.5", "Pick-a-Pic v2 PS (paper)"] == 20.79
    assert f.loc["LCM-SD1.5", "Pick-a-Pic v2 IR (paper)"] == -3.08
    assert f.loc["SD1.5", "Steps"] == 50 and f.loc["DRaFT", "Reward grad"] == "Yes"
    assert f.loc["my_variant", "Steps"] == 1 and f.loc["my_variant", "Reward grad"] == "No"
    assert f.loc["my_variant", "Parti-Prompts AES"] == 6.1 and pd.isna(f.loc["my_variant", "Parti-Prompts AES (paper)"])
    md = (out / "sd_turbo_main.md").read_text()
    assert "| DrPO | 1 | No | 23.49 (paper 23.49) | 6.485 (paper 6.485) | – (paper 9.54) |" in md
    assert "| SD1.5 | 50 | – | – (paper 20.79) |" in md
    tex = (out / "sd_turbo_main.tex").read_text()
    assert r"DrPO & 1 & No & 23.49~{\scriptsize(paper 23.49)}" in tex
    assert r"\multicolumn{3}{c}{Pick-a-Pic v2} & \multicolumn{3}{c}{Parti-Prompts}" in tex
    assert r"my\_variant" in tex
    s = sources(out, "sd_turbo_main").set_index(["row", "column"])
    cell = s.loc[("DrPO", "Pick-a-Pic v2 PS")]
    assert cell["source"] == "runs/drpo/pap/scores.parquet" and cell["raw"] == 0.2349
    assert cell["ci_low"] == pytest.approx(23.31) and cell["ci_high"] == pytest.approx(23.67)
    assert cell["paper_source"] == "METHOD.md §6.2"
    assert "§6.2" in s.loc[("SD1.5", "Steps"), "source"]


def test_sdxl_main_and_alias_rows(built):
    out, _ = built
    f = csv(out, "sdxl_turbo_main").set_index("Method")
    assert f.loc["DPO 1step", "Parti-Prompts IR"] == 11.25 and f.loc["DPO 1step", "Parti-Prompts IR (paper)"] == 11.25
    assert f.loc["SDXL-Turbo base", "Pick-a-Pic v2 PS (paper)"] == 22.45 and len(f) == 9


def test_efficiency_speedup_and_breakdown(built):
    out, _ = built
    f = csv(out, "hpsv3_efficiency").set_index("Metric")
    assert float(f.loc["Update time (s)", "DrPO"]) == 6.0 and float(f.loc["Update time (s)", "DrPO (paper)"]) == 6.17
    assert float(f.loc["Speed-up (×)", "DrPO"]) == 3.5 and float(f.loc["Speed-up (×)", "DrPO (paper)"]) == 3.51
    assert float(f.loc["Backward (s)", "DrPO"]) == 0.34  # 0.335 at 2 decimals (banker's rounding aside)
    assert f.loc["Reward gradient", "DRaFT"] == "Yes" and int(float(f.loc["Effective batch", "DrPO"])) == 192
    assert float(f.loc["↳ reward score (s)", "DRaFT"]) == 8.5
    s = sources(out, "hpsv3_efficiency").set_index(["row", "column"])
    assert "timing/draft.json" in s.loc[("Speed-up (×)", "DrPO"), "source"] and "timing/drpo.json" in s.loc[("Speed-up (×)", "DrPO"), "source"]


def test_geneval_table_percent_and_overall(built):
    out, _ = built
    f = csv(out, "geneval").set_index("Task")
    assert f.loc["Counting", "SD-Turbo"] == 34.0 and f.loc["Counting", "SD-Turbo (paper)"] == 33.8
    assert f.loc["Counting", "+DrPO"] == 42.5 and f.loc["Single object", "+DrPO (paper)"] == 100.0
    overall = (0.99 + 0.46 + 0.34 + 0.84 + 0.08 + 0.09) / 6 * 100  # 46.666…
    assert f.loc["Overall (mean of tasks)", "SD-Turbo"] == round(overall, 1) == 46.7
    assert pd.isna(f.loc["Overall (mean of tasks)", "+DrPO"])  # five tasks missing: no overall
    assert pd.isna(f.loc["Overall (mean of tasks)", "SD-Turbo (paper)"])


def test_reference_objective_and_ablations(built):
    out, _ = built
    f = csv(out, "reference_objective").set_index("Objective")
    assert f.loc["Ref. drift loss", "CLIP"] == 26.22 and f.loc["Ref. drift loss", "HPSv2"] == 35.07
    assert f.loc["Ref. drift loss", "HPSv2 (paper)"] == 35.07 and f.loc["No reference", "AES"] == 6.603
    k = csv(out, "ablation_k").set_index("Candidates per prompt K")
    assert k.loc["K = 16", "PS"] == 23.24 and k.loc["SD-Turbo base", "PS (paper)"] == 21.88
    eta = csv(out, "ablation_eta").set_index("Velocity scale η")
    assert eta.loc["η = 3000", "AES"] == 6.542 and eta.loc["η = 3000", "AES (paper)"] == 6.542
    assert r"$\eta$ = 3000" in (out / "ablation_eta.tex").read_text()
    fm = csv(out, "ablation_feature_map").set_index("Feature map")
    assert fm.loc["Latent (raw)", "PS"] == 20.52 and list(fm.index) == [row.label for row in P.ROWS["ablation_feature_map"]]
    assert csv(out, "ablation_kernel").set_index("Kernel").loc["Laplacian", "PS"] == 23.51


def test_preference_table_and_figures(built):
    out, written = built
    f = csv(out, "qwen3vl_preference").set_index("DrPO vs.")
    assert f.loc["DPO", "Pick-a-Pic v2"] == 78.7 and f.loc["DPO", "Pick-a-Pic v2 (paper)"] == 78.7
    assert f.loc["SDXL-Turbo", "Parti-Prompts"] == 71.4
    s = sources(out, "qwen3vl_preference").set_index(["row", "column"])
    assert s.loc[("DPO", "Pick-a-Pic v2"), "ci_low"] == pytest.approx(76.0)
    for key in ("qwen3vl_preference_chart", "hpsv3_breakdown_chart", "training_curves"):
        png = written[key]["png"]
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, key
    curve = pd.read_csv(out / "training_curves.csv")
    drpo = curve[curve.run == "DrPO"]
    assert drpo["y"].iloc[0] == pytest.approx(21.88) and drpo["y"].iloc[-1] == pytest.approx(37.88)
    assert set(pd.read_csv(out / "training_curves.sources.csv")["column"]) == {"reward/mean"}


def test_already_scaled_and_duplicate_results_are_refused(tmp_path):
    scaled = pd.DataFrame([r("sd_turbo_main", "DrPO", "pickapic_v2", "pickscore", 23.49, "x")])
    with pytest.raises(ValueError, match="raw values"):
        T.main_table(scaled)
    dup = pd.DataFrame([r("sd_turbo_main", "DrPO", "pickapic_v2", "pickscore", 0.23, "a"),
                        r("sd_turbo_main", "drpo", "pap", "ps", 0.24, "b")])
    with pytest.raises(ValueError, match="2 rows"):
        T.main_table(dup)
    # a table the paper does not have is a generic one: methods × (test set, metric), scaled once
    written = T.build_all(pd.DataFrame([r("world_main", "DrPO", "world_test", "pickscore", 0.2, "a"),
                                        r("world_main", "Base", "world_test", "pickscore", 0.1, "b")]), tmp_path)
    assert set(written) == {"world_main"}
    md = (tmp_path / "world_main.md").read_text()
    assert "| DrPO | 20.00 |" in md and "| Base | 10.00 |" in md
    with pytest.raises(ValueError, match="missing columns"):
        T.load_results(pd.DataFrame({"table": ["x"]}))


def test_markdown_formatter_without_tabulate_and_tex_escaping():
    t = T.Table(name="t", title="50% of a_b", row_header="Method", rows=["a|b", "c_d"], columns=["PS"],
                cells=[[T.Cell(value=1.234, paper=1.2, decimals=2)], [T.Cell(value=None, decimals=2)]])
    md = T.markdown(t)
    assert "| a\\|b | 1.23 (paper 1.20) |" in md and "| c_d | – |" in md
    tex = T.latex(t)
    assert r"50\% of a\_b" in tex and r"c\_d & --" in tex


def test_drpo_tables_cli_with_judge_summaries(tmp_path):
    from drpo.cli import main

    res = tmp_path / "results.csv"
    RESULTS[RESULTS.table == "sd_turbo_main"].to_csv(res, index=False)
    judge = tmp_path / "judge_grpo_parti.json"
    judge.write_text(json.dumps({"wins": 70, "ties": 4, "invalid": 0, "valid": 100, "preference_share": 0.72,
                                 "ci": [0.63, 0.8]}))
    judge2 = tmp_path / "judge2.json"
    judge2.write_text(json.dumps({"preference_share": 0.6, "preference_share_ci95": [0.5, 0.7], "left_label": "drpo",
                                  "right_label": "draft"}))  # `drpo judge --summary` format
    out = tmp_path / "tables"
    assert main(["tables", "--results", str(res), "--out", str(out), "--judge", f"grpo:parti={judge}", f":pickapic={judge2}"]) == 0
    f = csv(out, "qwen3vl_preference").set_index("DrPO vs.")
    assert f.loc["GRPO", "Parti-Prompts"] == 72.0 and f.loc["DRaFT", "Pick-a-Pic v2"] == 60.0
    s = sources(out, "qwen3vl_preference").set_index(["row", "column"])
    assert (s.loc[("DRaFT", "Pick-a-Pic v2"), "ci_low"], s.loc[("DRaFT", "Pick-a-Pic v2"), "ci_high"]) == (50.0, 70.0)
    assert sources(out, "qwen3vl_preference").set_index(["row", "column"]).loc[("GRPO", "Parti-Prompts"), "source"] == str(judge)
    assert csv(out, "sd_turbo_main").set_index("Method").loc["DrPO", "Pick-a-Pic v2 PS"] == 23.49
    assert (out / "qwen3vl_preference.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "geneval.csv").exists()  # no results for it, and --all not given
    assert main(["tables", "--out", str(out), "--judge", str(judge)]) == 2  # opponent/test set unnamed


def test_a_metrics_log_with_a_repeated_step_reads_as_one_row_per_step(tmp_path):
    from drpo.eval.tables import read_metrics_log

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "lr": 0.1},
            {"step": 3, "loss": 1.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = read_metrics_log(log)
    assert df["step"].tolist() == [1, 2, 3]
    assert df["loss"].tolist() == [3.0, 1.5, 1.0] and df.loc[1, "lr"] == 0.1


def test_collect_averages_two_seeds_for_metrics_and_judge_and_tables_accept_it(tmp_path):
    from drpo.cli import main
    from drpo.eval.collect import collect

    models = {"base": {"label": "Base"}, "drpo-s42": {"run": "drpo", "label": "DrPO"}, "drpo-s43": {"run": "drpo", "label": "DrPO"}}
    for mid, mean in (("base", 0.50), ("drpo-s42", 0.60), ("drpo-s43", 0.70)):
        (tmp_path / "scores" / "t" / mid).mkdir(parents=True)
        (tmp_path / "scores" / "t" / mid / "acc.json").write_text(json.dumps({"mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}))
    for mid, d in (("drpo-s42", 1.5), ("drpo-s43", 2.5)):  # the reference (base) has no distance to itself
        (tmp_path / "scores" / "t" / mid / "distance.json").write_text(json.dumps({"kind": "distance", "mean": d}))
    judged = []
    for seed, share in ((42, 0.55), (43, 0.65)):
        path = tmp_path / "judge" / "t" / f"drpo-s{seed}__vs__base.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"preference_share": share, "preference_share_ci95": [share - 0.05, share + 0.05]}))
        judged.append(str(path))
    spec = {"results": str(tmp_path), "models": models, "test_sets": ["t"], "metrics": ["acc", "distance"],
            "tables": {"main": {"rows": ["base", "drpo"]}}, "judged": judged}
    full = collect(spec).set_index(["table", "method", "metric"])
    assert full.loc[("main", "DrPO", "distance"), "value"] == pytest.approx(2.0)
    assert ("main", "Base", "distance") not in full.index
    df = full.xs("acc", level="metric")
    assert df.loc[("main", "DrPO"), "value"] == pytest.approx(0.65)
    assert (df.loc[("main", "DrPO"), "ci_low"], df.loc[("main", "DrPO"), "ci_high"]) == pytest.approx((0.6, 0.7))
    assert (df.loc[("main", "Base"), "ci_low"], df.loc[("main", "Base"), "ci_high"]) == pytest.approx((0.4, 0.6))  # one seed: its own CI
    judge = full.loc[("judge_preference", "DrPO vs Base", "preference")]
    assert (judge["value"], judge["ci_low"], judge["ci_high"]) == pytest.approx((0.6, 0.55, 0.65))
    assert judge["source"].count(";") == 1  # both seeds' summaries behind the one cell
    res = tmp_path / "results.csv"
    collect(spec).to_csv(res, index=False)
    assert main(["tables", "--results", str(res), "--out", str(tmp_path / "tables"), "--all"]) == 0
    table = (tmp_path / "tables" / "main.md").read_text()
    assert re.search(r"DrPO.*\| 2\.00", table), table
