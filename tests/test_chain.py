"""The chain of steps on a small results tree, each step reading what the one before wrote:
prompts → sample → score → judge → collect → tables. Every path comes from the embedded config's
`drpo.contracts.Layout`, every argument from the same `drpo.workflow` builders the rules call, and
the models are real: the shapes world's shipped base (32 px) and reward model.

The judged "DrPO" here is the base itself (sampled twice, under both model ids), so the chain has
numbers to check exactly: every cell of the two rows agrees, the distance to the base is 0 and the
judge calls every pair a tie (a 50 % preference share)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from drpo import workflow as wf
from drpo.cli import main
from drpo.contracts import read_judge_summary, read_manifest, read_results, read_score_summary
from drpo.io import read_jsonl, write_jsonl
from drpo.world.shipped import SHIPPED

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    results = tmp_path_factory.mktemp("chain") / "results"
    config = wf.validate_config({**yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), "results": str(results)})
    L = wf.layout(config)
    shutil.copytree(Path(SHIPPED) / "base", L.world_base())
    shutil.copytree(Path(SHIPPED) / "reward_model", L.world_reward_model())
    (ts,) = config["evaluation"]["test_sets"]
    assert main([*wf.prompt_set_argv(config, ts), "--out", L.prompts(ts)]) == 0
    write_jsonl(L.prompts(ts), read_jsonl(L.prompts(ts))[:24])  # a small test set: 24 prompts x the config's seeds
    seeds = ",".join(map(str, config["evaluation"]["seeds"]))
    base_argv = wf.sample_argv(config, "base")  # the base's generator, also for "drpo-s42"
    for model in ("base", "drpo-s42"):
        assert main(["sample", *base_argv, "--prompts", L.prompts(ts), "--seeds", seeds, "--out", L.sample_set(ts, model),
                     "--no-progress"]) == 0
        wf.write_score_plan(config, model, L.score_plan(model))
        assert main(["score", "--plan", L.score_plan(model), "--done", L.score_done(model), "--no-progress"]) == 0
    assert main(["judge", "--a", L.manifest(ts, "drpo-s42"), "--b", L.manifest(ts, "base"), *wf.judge_argv(config),
                 "--out", L.judgements(ts, "drpo-s42", "base"), "--summary", L.judge_summary(ts, "drpo-s42", "base")]) == 0
    wf.write_collect_spec(config, L.collect_spec())
    assert main(["collect", "--spec", L.collect_spec(), "--out", L.results_csv()]) == 0
    assert main(["tables", "--results", L.results_csv(), "--spec", L.collect_spec(), "--out", L.tables()]) == 0
    return config, L, ts


def test_each_step_reads_what_the_step_before_wrote(chain):
    config, L, ts = chain
    rows = read_manifest(L.manifest(ts, "base"))
    assert len(rows) == 24 * len(config["evaluation"]["seeds"]) and all(Path(r.image).is_file() and r.tag for r in rows)
    assert [r.key for r in rows] == [r.key for r in read_manifest(L.manifest(ts, "drpo-s42"))]
    for metric in config["evaluation"]["metrics"]:
        summary = read_score_summary(L.score_summary(ts, "base", metric))
        assert summary.n == len(rows) and summary.ci_low <= summary.mean <= summary.ci_high
    assert read_score_summary(L.score_summary(ts, "base", "distance")) is None  # the reference has no distance to itself
    assert read_score_summary(L.score_summary(ts, "drpo-s42", "distance")).mean == pytest.approx(0.0, abs=1e-9)
    judged = read_judge_summary(L.judge_summary(ts, "drpo-s42", "base"))
    assert (judged.n, judged.ties, judged.preference_share) == (len(rows), len(rows), 0.5)
    results = read_results(L.results_csv())
    assert results and all(Path(p).is_file() for r in results for p in r.source.split(";"))


def test_the_tables_hold_the_summaries_numbers(chain):
    config, L, ts = chain
    main_table = pd.read_csv(L.table("main", "csv"), keep_default_na=False).set_index("Method")
    models = wf.eval_models(config)
    base, drpo = models["base"]["label"], models["drpo-s42"]["label"]
    numbers = [c for c in main_table.columns if "distance" not in c]
    assert (main_table.loc[base, numbers] == main_table.loc[drpo, numbers]).all()  # the same generator
    pickscore = read_score_summary(L.score_summary(ts, "base", "pickscore"))
    assert float(main_table.loc[base, "world PickScore"]) == round(100 * pickscore.mean, 2)
    # GenEval overall: the mean of the six tag accuracies, from the checker's per-image scores
    scores = pd.read_parquet(L.score_values(ts, "base", "geneval"))
    by_tag = (scores["score"] > 0.5).groupby(scores["tag"]).mean()
    assert float(main_table.loc[base, "GenEval overall"]) == round(100 * by_tag.mean(), 1)
    assert float(main_table.loc[base, "GenEval image accuracy"]) == round(100 * (scores["score"] > 0.5).mean(), 1)
    preference = pd.read_csv(L.table("judge_preference", "csv")).set_index("DrPO vs.")
    assert preference.loc[base, ts] == 50.0
