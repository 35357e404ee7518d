"""Tables and figures: exact cells (display-scaled once), the paper beside ours, every cell traced."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from drpo.contracts import write_judge_summary, write_results
from drpo.eval import paper as P
from drpo.eval import tables as T
from drpo.eval.metrics import display_scale
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
    written = T.build_all(RESULTS, out, tables=T.paper_tables(), curves={"DrPO": log, "DRaFT": log2})
    return out, written


def csv(out, name):
    return pd.read_csv(out / f"{name}.csv")


def sources(out, name):
    return pd.read_csv(out / f"{name}.sources.csv", keep_default_na=False, na_values=[""])


def test_every_table_written_with_paper_columns_and_sources(built):
    out, written = built
    for name in P.TABLES:
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
    for key in ("qwen3vl_preference_chart", "hpsv3_efficiency_breakdown_chart", "training_curves"):
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
        T.main_table(scaled, "sd_turbo_main", "sd_turbo_main")
    dup = pd.DataFrame([r("sd_turbo_main", "DrPO", "pickapic_v2", "pickscore", 0.23, "a"),
                        r("sd_turbo_main", "drpo", "pap", "ps", 0.24, "b")])
    with pytest.raises(ValueError, match="2 rows"):
        T.main_table(dup, "sd_turbo_main", "sd_turbo_main")
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
    from drpo.contracts import JudgeSummary, write_judge_summary

    judge = tmp_path / "judge_grpo_parti.json"
    write_judge_summary(judge, JudgeSummary(n=100, valid=100, wins=70, losses=26, ties=4, invalid=0, preference_share=0.72,
                                            preference_share_ci95=(0.63, 0.8)))
    judge2 = tmp_path / "judge2.json"  # `drpo judge --summary` format, by hand
    judge2.write_text(json.dumps({"n": 10, "valid": 10, "wins": 6, "losses": 4, "ties": 0, "invalid": 0, "preference_share": 0.6,
                                  "preference_share_ci95": [0.5, 0.7], "left_label": "drpo", "right_label": "draft"}))
    loose = tmp_path / "loose.json"
    loose.write_text(json.dumps({"preference_share": 0.6, "ci": [0.5, 0.7]}))
    out = tmp_path / "tables"
    assert main(["tables", "--results", str(res), "--out", str(out), "--paper", "--judge", f"grpo:parti={judge}", f":pickapic={judge2}"]) == 0
    f = csv(out, "qwen3vl_preference").set_index("DrPO vs.")
    assert f.loc["GRPO", "Parti-Prompts"] == 72.0 and f.loc["DRaFT", "Pick-a-Pic v2"] == 60.0
    s = sources(out, "qwen3vl_preference").set_index(["row", "column"])
    assert (s.loc[("DRaFT", "Pick-a-Pic v2"), "ci_low"], s.loc[("DRaFT", "Pick-a-Pic v2"), "ci_high"]) == (50.0, 70.0)
    assert sources(out, "qwen3vl_preference").set_index(["row", "column"]).loc[("GRPO", "Parti-Prompts"), "source"] == str(judge)
    assert csv(out, "sd_turbo_main").set_index("Method").loc["DrPO", "Pick-a-Pic v2 PS"] == 23.49
    assert (out / "qwen3vl_preference.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "geneval.csv").exists()  # no results for it, and --all not given
    assert main(["tables", "--out", str(out), "--paper", "--judge", str(judge)]) == 2  # opponent/test set unnamed
    assert main(["tables", "--out", str(out), "--judge", f"grpo:parti={judge}"]) == 2  # no preference table to put it in
    assert main(["tables", "--out", str(out), "--paper", "--judge", f"grpo:parti={loose}"]) == 2  # not a judge summary


def test_a_metrics_log_with_a_repeated_step_reads_as_one_row_per_step(tmp_path):
    from drpo.eval.tables import read_metrics_log

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "lr": 0.1},
            {"step": 3, "loss": 1.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = read_metrics_log(log)
    assert df["step"].tolist() == [1, 2, 3]
    assert df["loss"].tolist() == [3.0, 1.5, 1.0] and df.loc[1, "lr"] == 0.1


def _judge_summary(share: float, ci: tuple[float, float], **labels):
    """A `drpo judge` summary of 100 valid verdicts with the given preference share (no ties)."""
    from drpo.contracts import JudgeSummary

    wins = round(100 * share)
    return JudgeSummary(n=100, valid=100, wins=wins, losses=100 - wins, ties=0, invalid=0, preference_share=share,
                        preference_share_ci95=ci, **labels)


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
        write_judge_summary(path, _judge_summary(share, (share - 0.05, share + 0.05)))
        judged.append({"test_set": "t", "judged": f"drpo-s{seed}", "opponent": "base", "path": str(path)})
    spec = {"results": str(tmp_path), "models": models, "test_sets": ["t"], "metrics": ["acc", "distance"],
            "tables": {"main": {"builder": "generic", "rows": ["base", "drpo"]},
                       "pref": {"builder": "preference", "rows": ["base"]}}, "judged": judged}
    full = pd.DataFrame([r.to_json() for r in collect(spec)]).set_index(["table", "method", "metric"])
    assert full.loc[("main", "DrPO", "distance"), "value"] == pytest.approx(2.0)
    assert ("main", "Base", "distance") not in full.index
    df = full.xs("acc", level="metric")
    assert df.loc[("main", "DrPO"), "value"] == pytest.approx(0.65)
    assert (df.loc[("main", "DrPO"), "ci_low"], df.loc[("main", "DrPO"), "ci_high"]) == pytest.approx((0.6, 0.7))
    assert (df.loc[("main", "Base"), "ci_low"], df.loc[("main", "Base"), "ci_high"]) == pytest.approx((0.4, 0.6))  # one seed: its own CI
    judge = full.loc[("pref", "Base", "preference")]  # the opponent is the row, DrPO the judged model
    assert (judge["value"], judge["ci_low"], judge["ci_high"]) == pytest.approx((0.6, 0.55, 0.65))
    assert judge["judged"] == "DrPO" and judge["test_set"] == "t"
    assert judge["source"].count(";") == 1  # both seeds' summaries behind the one cell
    assert set(full.reset_index()["table"]) == {"main", "pref"}  # no score rows in the preference table, no other table
    res = tmp_path / "results.csv"
    write_results(res, collect(spec))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    assert main(["tables", "--results", str(res), "--spec", str(spec_file), "--out", str(tmp_path / "tables")]) == 0
    table = (tmp_path / "tables" / "main.md").read_text()
    assert re.search(r"DrPO.*\| 2\.00", table), table
    pref = csv(tmp_path / "tables", "pref").set_index("DrPO vs.")
    assert pref.loc["Base", "t"] == 60.0 and list(pref.columns) == ["t"]


# -- the seams: workflow config -> collect spec file -> drpo collect -> drpo tables (issue 16.4) ---------

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"default": ROOT / "config" / "config.yaml", "world-long": ROOT / "config" / "world-long.yaml",
           "sd-turbo": ROOT / "config" / "paper" / "sd-turbo.yaml", "sdxl-turbo": ROOT / "config" / "paper" / "sdxl-turbo.yaml"}


def _config(name: str, results: Path | None = None) -> dict:
    from drpo import workflow as wf

    raw = yaml.safe_load(CONFIGS[name].read_text())
    if results is not None:
        raw = {**raw, "results": str(results)}  # its `{results}/...` paths move along
    return wf.validate_config(raw, source=name)


def _write_judge_summaries(config: dict, shares: dict[str, float]) -> None:
    """A `drpo judge --summary` JSON for every pair of the config, share by opponent run (+ 0.01 per seed)."""
    from drpo import workflow as wf

    models = wf.eval_models(config)
    for j in wf.judge_summaries(config):
        opp = models[j["opponent"]]
        share = shares[opp.get("run", j["opponent"])] + 0.01 * config["training"]["seeds"].index(models[j["judged"]]["seed"])
        path = Path(j["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_judge_summary(path, _judge_summary(share, (share - 0.03, share + 0.03), left_label=j["judged"], right_label=j["opponent"]))


def test_collect_reads_its_spec_from_a_file_and_only_a_file(tmp_path, capsys):
    from drpo import workflow as wf
    from drpo.cli import main

    config = _config("sd-turbo", tmp_path / "res")
    text = wf.to_json(wf.collect_spec(config))
    assert len(text) > 4000  # the SD-Turbo study's spec: what the rule used to pass on the command line
    out = tmp_path / "results.csv"
    assert main(["collect", "--spec", text, "--out", str(out)]) == 2  # refused with one line, no OSError
    assert "--spec takes the path of a JSON file" in capsys.readouterr().err
    assert main(["collect", "--spec", '{"tables": {}}', "--out", str(out)]) == 2  # small JSON too: a path or nothing
    assert main(["collect", "--spec", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("tables: {}\n")
    assert main(["collect", "--spec", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert "not JSON" in capsys.readouterr().err
    # the file the workflow's collect_spec rule writes
    spec = wf.write_collect_spec(config, tmp_path / "res" / "collect_spec.json")
    assert json.loads(spec.read_text()) == json.loads(text)
    score = tmp_path / "res" / "scores" / "pickapic_test" / "drpo-s42" / "pickscore.json"
    score.parent.mkdir(parents=True)
    score.write_text(json.dumps({"mean": 0.2349, "ci_low": 0.233, "ci_high": 0.237}))
    assert main(["collect", "--spec", str(spec), "--out", str(out)]) == 0
    got = pd.read_csv(out)
    assert set(got["table"]) == {"sd_turbo_main", "reference_objective", "ablation_k", "ablation_feature_map",
                                 "ablation_kernel", "ablation_eta"}  # DrPO's row in each
    assert (got["value"] == 0.2349).all()


def test_the_rules_pass_the_spec_as_a_file_that_the_dag_tracks():
    smk = (ROOT / "workflow" / "rules" / "tables.smk").read_text()
    collect = smk[smk.index("rule collect:"):smk.index("rule tables:")]
    tables = smk[smk.index("rule tables:"):smk.index("rule report_html:")]
    assert "spec=rules.collect_spec.output[0]" in collect and "--spec {input.spec:q}" in collect and "params" not in collect
    assert "spec=rules.collect_spec.output[0]" in tables and "--spec {input.spec:q}" in tables


@pytest.mark.parametrize("name", ["sdxl-turbo", "default"])
def test_judge_summaries_reach_the_preference_table(tmp_path, name):
    """results tree with judge summaries -> drpo collect -> drpo tables: every configured row of the
    preference table has a number on every test set (beside the paper's value for a paper config)."""
    from drpo import workflow as wf
    from drpo.cli import main

    res = tmp_path / "res"
    config = _config(name, res)
    pref = [t for t, s in config["tables"].items() if s["builder"] == "preference"]
    assert len(pref) == 1
    pref = pref[0]
    shares = {"base": 0.70, "dpo": 0.79, "grpo": 0.70, "draft": 0.55, "vggflow": 0.56}
    _write_judge_summaries(config, shares)
    spec = wf.write_collect_spec(config, res / "collect_spec.json")
    assert main(["collect", "--spec", str(spec), "--out", str(res / "results.csv")]) == 0
    rows = pd.read_csv(res / "results.csv", keep_default_na=False, na_values=[""])
    mine = rows[rows["table"] == pref]
    assert set(mine["judged"]) == {"DrPO"} and set(mine["metric"]) == {"preference"}
    assert main(["tables", "--results", str(res / "results.csv"), "--spec", str(spec), "--out", str(res / "tables")]) == 0
    table = csv(res / "tables", pref).set_index("DrPO vs.")
    models = wf.eval_models(config)
    against = config["tables"][pref]["rows"]
    paper = config["tables"][pref].get("paper")
    if paper:  # the configured opponents are the paper's rows, in the paper's order and labels
        assert list(table.index) == [P.row_label(paper, P.canonical_row(paper, models[m if m in models else f"{m}-s42"]["label"]))
                                     for m in against] == [r.label for r in P.ROWS[paper]]
        test_sets = {"Pick-a-Pic v2": "pickapic_v2", "Parti-Prompts": "parti"}
    else:
        assert list(table.index) == [models[m if m in models else f"{m}-s42"]["label"] for m in against]
        test_sets = {ts: ts for ts in config["evaluation"]["test_sets"]}
        assert not any(c.endswith("(paper)") for c in table.columns)
    seeds = config["training"]["seeds"]
    for m, label in zip(against, table.index):
        for col, ts in test_sets.items():
            expected = 100 * (shares[m] + 0.01 * (len(seeds) - 1) / 2)  # the mean over the judged seeds
            assert table.loc[label, col] == pytest.approx(expected, abs=0.051), (label, col)
            if paper:
                assert table.loc[label, f"{col} (paper)"] == P.PAPER[paper][(P.canonical_row(paper, label), ts, "preference")]
    assert (res / "tables" / f"{pref}.png").read_bytes()[:8] == PNG_MAGIC
    assert not (res / "tables" / "judge_preference.csv").exists() or pref == "judge_preference"


WORLD_GENEVAL = {"single_object": 1.0, "two_object": 0.8, "counting": 0.286, "colors": 0.8, "position": 0.625, "color_attr": 0.446}


def _world_results(config: dict) -> pd.DataFrame:
    """What collect writes for the default config's tables (labels from the config)."""
    from drpo import workflow as wf

    models = wf.eval_models(config)
    label = {m: (models[m] if m in models else models[f"{m}-s42"])["label"] for m in list(models) + list(config["training"]["runs"])}
    out = []
    for table, spec in config["tables"].items():
        for m in wf.table_rows(config, table):
            if spec["builder"] == "preference":
                out.append(r(table, label[m], "world_test", "preference", 0.574, f"judge/{m}.json") | {"judged": "DrPO"})
                continue
            out.append(r(table, label[m], "world_test", "pickscore", 0.6894, f"scores/{m}/pickscore.json"))
            out.append(r(table, label[m], "world_test", "geneval", 0.558, f"scores/{m}/geneval.json"))
            out += [r(table, label[m], "world_test", f"geneval:{t}", v, f"scores/{m}/geneval.parquet") for t, v in WORLD_GENEVAL.items()]
            out.append(r(table, label[m], "world_test", "geneval:overall", sum(WORLD_GENEVAL.values()) / 6, f"scores/{m}/geneval.parquet"))
    return pd.DataFrame(out)


@pytest.mark.parametrize("name", ["default", "world-long"])
def test_a_world_table_prints_no_paper_values(tmp_path, name):
    from drpo import workflow as wf

    config = _config(name)
    assert not any("paper" in spec for spec in config["tables"].values())
    tables = wf.collect_spec(config)["tables"]
    written = T.build_all(_world_results(config), tmp_path, tables=tables, include_empty=True)
    assert set(tables) <= set(written)
    for t in tables:
        md, tex = (tmp_path / f"{t}.md").read_text(), (tmp_path / f"{t}.tex").read_text()
        assert "paper" not in md and "paper" not in tex, t  # no "(paper 13.0)" cell, no "Cells: ours (paper value)"
        assert not any("paper" in c for c in csv(tmp_path, t).columns), t
        assert sources(tmp_path, t)["paper"].isna().all(), t
    assert "paper" not in (tmp_path / "index.md").read_text()
    if "geneval" in tables:  # the GenEval builder, with the world's models as its columns (no SD-Turbo column)
        f = csv(tmp_path, "geneval").set_index("Task")
        assert list(f.columns) == ["Shapes-Turbo base", "DrPO"]
        assert f.loc["Position", "DrPO"] == 62.5 and f.loc["Color attribution", "Shapes-Turbo base"] == 44.6
        assert "| Position | 62.5 | 62.5 |" in (tmp_path / "geneval.md").read_text()
    # the generic tables: methods x metrics by their config labels, GenEval overall (the mean of the
    # six tags) before the tags and the image accuracy, the one test set in the title, display-scaled once
    main_md = (tmp_path / "main.md").read_text()
    assert main_md.startswith("### main (test set world_test)\n")
    assert ("| Method | world PickScore | GenEval overall | Single object | Two objects | Counting | Colors | Position | "
            "Color attribution | GenEval image accuracy |") in main_md
    assert re.search(r"^\| DrPO[^|]* \| 68\.94 \| 66\.0 \| 100\.0 \| 80\.0 \| 28\.6 \| 80\.0 \| 62\.5 \| 44\.6 \| 55\.8 \|$",
                     main_md, re.M), main_md
    assert main_md.rstrip().endswith("Every cell's source: `main.sources.csv`.")


def test_a_table_is_drawn_by_its_spec_not_by_its_name(tmp_path):
    geneval = [r("ours", "SD-Turbo", "geneval", f"geneval:{t}", v, "s.json") for t, v in WORLD_GENEVAL.items()]
    main = [r("sd_turbo_main", "DrPO", "pickapic_v2", "pickscore", 0.2349, "s.json")]
    res = pd.DataFrame(geneval + main)
    specs = {"ours": {"builder": "geneval", "paper": "geneval"}, "sd_turbo_main": {"builder": "generic"}}
    T.build_all(res, tmp_path, tables=specs)
    f = csv(tmp_path, "ours").set_index("Task")
    assert f.loc["Counting", "SD-Turbo (paper)"] == 33.8 and list(f.columns)[:2] == ["SD-Turbo", "SD-Turbo (paper)"]
    assert "Cells: ours (paper value)" in (tmp_path / "ours.md").read_text()
    g = csv(tmp_path, "sd_turbo_main")  # named like the paper's table, drawn as the spec says: no paper numbers
    assert list(g.columns) == ["Method", "pickscore"] and g.iloc[0].tolist() == ["DrPO", 23.49]
    # without a spec every table is generic; a paper table must be one its builder draws
    T.build_all(res, tmp_path / "plain")
    assert "paper" not in (tmp_path / "plain" / "ours.md").read_text()
    with pytest.raises(ValueError, match="drawn by builder 'main', not 'geneval'"):
        T.build_table(res, "ours", {"builder": "geneval", "paper": "sd_turbo_main"})
    with pytest.raises(ValueError, match="builder 'paper' is not one of"):
        T.build_table(res, "ours", {"builder": "paper"})


def test_schema_enums_are_the_builders_and_the_papers_tables():
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    spec = schema["properties"]["tables"]["additionalProperties"]
    assert spec["required"] == ["builder"]
    assert spec["properties"]["builder"]["enum"] == list(T.BUILDERS)
    assert spec["properties"]["paper"]["enum"] == list(P.TABLES) and set(P.TABLES) == set(P.PAPER)
    assert set(P.TABLES.values()) <= set(T.BUILDERS)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["tables"]["main"].pop("builder"), r"tables\.main: 'builder' is a required property"),
    (lambda c: c["tables"]["main"].update(builder="sd_turbo_main"), r"tables\.main\.builder: 'sd_turbo_main' is not one of"),
    (lambda c: c["tables"]["geneval"].update(paper="geneval"), r"tables\.geneval\.paper: a shapes-world config's tables are compared with none"),
    (lambda c: c["tables"]["main"].update(paper="sd_turbo_main"), r"tables\.main\.paper: the paper's sd_turbo_main is drawn by builder main, not generic"),
    (lambda c: c["tables"]["judge_preference"]["rows"].append("pso"), r"tables\.judge_preference\.rows: 'pso' is not judged against drpo"),
    (lambda c: c["tables"]["main"]["rows"].append("dpo2"), r"tables\.main\.rows: 'dpo2' is neither a base model nor a run"),
])
def test_bad_table_specs_name_the_key(edit, message):
    from drpo import workflow as wf
    from drpo.config import ConfigError

    config = yaml.safe_load(CONFIGS["default"].read_text())
    edit(config)
    with pytest.raises(ConfigError, match=message):
        wf.validate_config(config, source="config.yaml")


@pytest.mark.parametrize("name", ["sd-turbo", "sdxl-turbo"])
def test_every_configured_row_of_a_paper_table_lands_on_a_paper_row(name):
    """A config's row labels map onto the paper's rows (else ours and the paper's sit on two rows)."""
    from drpo import workflow as wf

    config = _config(name)
    models = wf.eval_models(config)
    for table, spec in config["tables"].items():
        paper = spec["paper"]
        keys = {row.key for row in P.ROWS[paper]}
        for m in wf.table_rows(config, table):
            if spec.get("ablation") and m == config["training"]["ablations"][spec["ablation"]]["run"]:
                continue  # the grid's own run: an extra row beside the paper's base row
            label = (models[m] if m in models else models[f"{m}-s42"])["label"]
            assert P.canonical_row(paper, label) in keys, (table, m, label)


def test_report_refuses_a_tables_folder_that_is_not_there(tmp_path, capsys):
    """`drpo report --tables /nonexistent` used to write an empty report and exit 0."""
    from drpo.cli import main

    assert main(["report", "--tables", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    assert "--tables" in capsys.readouterr().err and not (tmp_path / "r.html").exists()
    (tmp_path / "empty").mkdir()
    assert main(["report", "--tables", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "holds no table" in capsys.readouterr().err and not (tmp_path / "r.html").exists()


def test_training_curves_give_each_reward_its_own_panel(tmp_path):
    """Runs log `reward/<name>/mean` (the reward they trained on); each reward gets a panel in its own
    display units, so a checker's 0-100 never sits under PickScore's ~22."""
    from drpo.eval.tables import training_curves
    from drpo.io import write_jsonl

    logs = {}
    for label, reward, values in (("DrPO", "pickscore", (0.22, 0.23)), ("DRaFT", "pickscore", (0.22, 0.25)),
                                  ("DrPO checker", "world_checker", (0.4, 0.6))):
        logs[label] = write_jsonl(tmp_path / f"{label}.jsonl", [{"step": s + 1, f"reward/{reward}/mean": v, "loss": 1.0}
                                                                for s, v in enumerate(values)])
    png = training_curves(logs, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    sources = pd.read_csv(tmp_path / "curves.sources.csv").set_index("run")
    assert sources.loc["DrPO checker", "reward"] == "world_checker" and sources.loc["DRaFT", "column"] == "reward/pickscore/mean"
    points = pd.read_csv(tmp_path / "curves.csv")
    checker = points[points.run == "DrPO checker"]["y"].tolist()
    assert checker == [pytest.approx(0.4 * display_scale("world_checker")), pytest.approx(0.6 * display_scale("world_checker"))]
    assert points[points.run == "DRaFT"]["y"].tolist() == [pytest.approx(22.0), pytest.approx(25.0)]
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[1] > matplotlib.image.imread(
        training_curves({"DrPO": logs["DrPO"]}, tmp_path / "one.png")).shape[1] * 1.5  # two panels, not one
