"""The workflow's config layer and its DAG: schema errors name the key path, every run and table
the paper needs is in the DAG, and `snakemake -n` plans the paper studies without any weights."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drpo import workflow as wf
from drpo.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "config.yaml"
PAPER = ROOT / "config" / "paper"


def default_config() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(colour="red"), r"unknown key colour"),
        (lambda c: c["training"]["runs"]["drpo"].update(lr=1), r"unknown key training\.runs\.drpo\.lr"),
        (lambda c: c["training"]["runs"]["drpo"].update(method="ppo"), r"training\.runs\.drpo\.method: 'ppo' is not one of"),
        (lambda c: c["evaluation"].update(seeds="42"), r"evaluation\.seeds: '42' is not of type 'array'"),
        (lambda c: c["models"]["shapes-turbo"].update(path="/no/such/model"), r"models\.shapes-turbo\.path: /no/such/model does not exist"),
        (lambda c: c["training"]["runs"]["dpo"].update(model="sdxl"), r"training\.runs\.dpo\.model: 'sdxl' is not in models"),
        (lambda c: c["training"]["runs"]["dpo"].update(reward="hps"), r"training\.runs\.dpo\.reward: 'hps' is not in rewards"),
        (lambda c: c["evaluation"].update(test_sets=["coco"]), r"evaluation\.test_sets: 'coco' is not in prompt_sets"),
        (lambda c: c.pop("experiment"), r"'experiment' is a required property"),
    ],
)
def test_bad_config_names_the_key_path(edit, message):
    config = default_config()
    edit(config)
    with pytest.raises(ConfigError, match=message):
        wf.validate_config(config, source="config.yaml")


def test_defaults_are_filled_and_runs_expand_over_seeds_and_ablations():
    config = wf.validate_config(default_config())
    assert config["results"] == "results" and config["tracking"]["uri"].startswith("sqlite:///")
    config["training"]["seeds"] = [42, 43]
    config["training"]["ablations"] = {"kernel": {"run": "drpo", "key": "drpo.kernel", "values": ["rbf", "cosine"]}}
    runs = wf.runs(config)
    assert "drpo-s42" in runs and "drpo-s43" in runs and "drpo-kernel-rbf-s43" in runs
    assert runs["drpo-kernel-cosine-s42"].overrides["drpo"] == {"kernel": "cosine"}
    assert len(runs) == 2 * (len(config["training"]["runs"]) + 2)


def test_feature_blocks_of_one_name_are_told_apart_by_their_labels():
    clip = {"name": "clip", "options": {"path": "results/world/reward_model"}}
    grid = {"run": "drpo", "key": "features", "values": [{**clip, "options": {**clip["options"], "keys": ["image_embeds"]}},
                                                          {**clip, "options": {**clip["options"], "keys": ["layer3_cls"]}}, {"name": "latent"}]}
    config = wf.validate_config(default_config())
    config["training"]["ablations"] = {"features": grid}
    message = r"config\.yaml: training\.ablations\.features: values \['clip', 'clip', 'latent'\] would name the same run twice; give the grid distinct `labels`"
    with pytest.raises(ConfigError, match=message):
        wf.validate_config(config, source="config.yaml")
    grid["labels"] = ["CLIP embeds", "CLIP cls", "Latent"]
    config = wf.validate_config(config)
    runs = wf.runs(config)
    assert runs["drpo-features-CLIP-cls-s42"].overrides["features"]["options"]["keys"] == ["layer3_cls"]
    assert runs["drpo-features-CLIP-embeds-s42"].overrides["features"]["options"]["keys"] == ["image_embeds"]
    config["tables"] = {"val_features": {"builder": "ablation", "ablation": "features", "metrics": ["geneval"]}}
    assert wf.table_rows(config, "val_features") == ["drpo", "drpo-features-CLIP-embeds", "drpo-features-CLIP-cls", "drpo-features-Latent"]
    # names stay the values' own where they differ (the paper's grids keep their run names)
    assert wf.ablation_points("features", {"run": "drpo", "values": [{"name": "latent"}, {"name": "dinov2"}], "labels": ["A", "B"]}) \
        == ["drpo-features-latent", "drpo-features-dinov2"]


def test_train_config_merges_defaults_run_and_ablation_and_is_a_valid_trainconfig():
    config = wf.validate_config(default_config())
    config["training"]["ablations"] = {"eta": {"run": "drpo", "key": "drpo.eta_pos", "values": [1000]}}
    cfg = wf.train_config(config, "drpo-eta-1000-s42")
    assert cfg["method"] == "drpo" and cfg["seed"] == 42
    assert cfg["drpo"]["eta_pos"] == 1000.0 and cfg["drpo"]["binary_reward"] is False
    assert cfg["drpo"]["candidates"] == 16  # from training.defaults
    assert cfg["output_dir"] == "results/runs/drpo-eta-1000-s42"
    assert cfg["prompts"]["path"] == "results/prompts/world_train.jsonl"
    assert cfg["reward"] == [{"name": "world_checker_graded", "weight": 1.0, "options": {}}]
    bad = copy.deepcopy(config)
    bad["training"]["runs"]["drpo"]["set"] = {"drpo": {"candidatez": 3}}
    with pytest.raises(ConfigError, match=r"training\.runs\.drpo: unknown key drpo\.candidatez"):
        wf.train_config(bad, "drpo-s42")


def test_paper_configs_define_every_table_of_section_6():
    sd = wf.validate_config(yaml.safe_load((PAPER / "sd-turbo.yaml").read_text()))
    sdxl = wf.validate_config(yaml.safe_load((PAPER / "sdxl-turbo.yaml").read_text()))
    assert set(sd["tables"]) >= {"sd_turbo_main", "geneval", "reference_objective", "ablation_k", "ablation_feature_map", "ablation_kernel", "ablation_eta"}
    assert set(sdxl["tables"]) >= {"sdxl_turbo_main", "qwen3vl_preference"}
    assert sd["evaluation"]["seeds"] == [42, 43, 44, 45, 46]
    for cfg in (sd, sdxl):
        methods = {r["method"] for r in cfg["training"]["runs"].values()}
        assert methods >= {"drpo", "draft", "vggflow", "dpo", "grpo", "pso"}
    drpo = wf.train_config(sd, "drpo-s42")  # §2.3 / §7 recipe
    assert (drpo["drpo"]["candidates"], drpo["drpo"]["positives"], drpo["drpo"]["negatives"]) == (24, 8, 8)
    assert drpo["grad_accum"] == 8 and drpo["steps"] == 1000 and drpo["optim"]["lr"] == 1e-4
    assert wf.launch_command(sd) == "accelerate launch --num_processes 4 -m drpo.cli"


def test_reference_comparisons_pair_each_model_with_its_reference():
    config = wf.validate_config(default_config())
    assert config["evaluation"]["distance"]["reference"] == "base"
    compared = {m for m in wf.eval_models(config) if any("comparison" in t for t in wf.score_plan(config, m))}
    assert compared == set(wf.runs(config))  # every model but the reference itself
    assert wf.reference_model(config, "distance", "drpo-s42") == "base"
    distance = wf.comparisons(config)["distance"]
    assert distance["extractor"] == "clip" and distance["options"]["path"].startswith("results/world/reward_model")
    # the score plan of a model holds its comparisons against the reference's samples; the base's has none
    tasks = [t for t in wf.score_plan(config, "drpo-s42") if "comparison" in t]
    assert [(t["test_set"], t["comparison"]) for t in tasks] == [("world_test", "distance")]
    assert tasks[0]["reference"] == "results/samples/world_test/base/manifest.jsonl"
    assert not [t for t in wf.score_plan(config, "base") if "comparison" in t]
    # a trained run as the reference: matched seed by seed, and never compared with itself
    config["training"]["seeds"] = [42, 43]
    config["evaluation"]["fid"] = {"reference": "drpo-noref", "inception": "models/inception.pt"}
    assert wf.reference_model(config, "fid", "drpo-s43") == "drpo-noref-s43"
    assert wf.reference_model(config, "fid", "drpo-noref-s43") is None
    assert wf.comparisons(config)["fid"]["options"] == {"path": "models/inception.pt"}
    assert wf.collect_spec(config, [])["metrics"][-2:] == ["fid", "distance"]
    bad = copy.deepcopy(default_config())
    bad["evaluation"]["distance"]["reference"] = "sd15"
    with pytest.raises(ConfigError, match=r"evaluation\.distance\.reference: 'sd15' is neither a base model nor a run"):
        wf.validate_config(bad)
    bad = copy.deepcopy(default_config())
    bad["evaluation"]["fid"] = {"reference": "base"}  # the Inception weights are a file the user provides
    with pytest.raises(ConfigError, match=r"evaluation\.fid: the inception extractor needs its weights; set evaluation\.fid\.inception"):
        wf.validate_config(bad)
    bad = copy.deepcopy(default_config())
    bad["evaluation"]["metrics"]["distance"] = {"name": "world_checker"}
    with pytest.raises(ConfigError, match=r"evaluation\.metrics\.distance: the name is taken"):
        wf.validate_config(bad)


def _dry_run(*args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "-n", "--quiet", "rules"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _job_counts(text: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", text, re.M)}


def test_dry_run_of_the_embedded_default_lists_the_whole_pipeline():
    text = _dry_run()
    # the workflow profile is found beside the root Snakefile (./profiles -> workflow/profiles), so a
    # killed run's incomplete outputs are re-run without --rerun-incomplete (the README's recovery)
    assert "Using workflow specific profile profiles/default" in text
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert profile["rerun-incomplete"] is True and profile["force-use-threads"] is True
    counts = _job_counts(text)
    config = wf.validate_config(default_config())
    n_runs = len(wf.runs(config))
    n_models = n_runs + len(config["evaluation"]["base_models"])
    assert counts["train"] == n_runs
    # one sample and one score job per model (every test set, every metric and comparison)
    assert counts["sample"] == counts["score"] == counts["score_plan"] == n_models
    assert counts["judge"] == len(config["evaluation"]["judge"]["against"])
    assert "compare" not in counts
    assert counts["world_base"] == 1 and counts["tables"] == 1 and counts["report_html"] == 1
    # each configured table is a target of its own
    one = _job_counts(_dry_run("results/tables/geneval.tex"))
    assert one["tables"] == 1 and "report_html" not in one


def test_a_configfile_replaces_the_default_and_results_moves_every_path(tmp_path):
    """No `configfile:` directive: a --configfile is the whole config, never merged into the embedded
    default; `--config results=DIR` moves every `{results}/...` path, the world's models and the
    SQLite store included."""
    # a paper config inherits no world: block (its tables name paper tables, which a world config may not)
    counts = _job_counts(_dry_run("all", "--configfile", str(PAPER / "sd-turbo.yaml")))
    assert counts["train"] > 0 and not [rule for rule in counts if rule.startswith("world")]
    # the default with results=DIR: the base model a sample job loads is the one built under DIR
    out = tmp_path / "x"
    counts = _job_counts(_dry_run(f"{out}/samples/world_test/base/manifest.jsonl", "--config", f"results={out}"))
    assert counts["world_base"] == 1 and counts["sample"] == 1
    # the SQLite store too: a dry run opens none, so run the one job that writes a run's config
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", f"{out}/runs/drpo-s42/train.yaml", "--cores", "1",
                           "--config", f"results={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    for log in re.findall(r"Complete log\(s\): (\S+)", proc.stdout + proc.stderr):  # .snakemake/log/ in the repo
        Path(log).unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = yaml.safe_load((out / "runs" / "drpo-s42" / "train.yaml").read_text())
    assert written["model"]["path"] == f"{out}/world/base" and written["tracking"]["uri"] == f"sqlite:///{out}/mlflow.db"
    assert (out / "mlflow.db").is_file()  # the invocation's parent run (onstart) is in DIR's store


def test_results_placeholder_is_the_only_one():
    raw = default_config()
    assert raw["models"]["shapes-turbo"]["path"] == "{results}/world/base"
    assert wf.snakemake_config({}) == wf.load_config(DEFAULT)  # no config file: the embedded default
    moved = wf.snakemake_config({"results": "/elsewhere", "threads": 2})  # --config values on top of it
    assert moved["threads"] == 2 and moved["models"]["shapes-turbo"]["path"] == "/elsewhere/world/base"
    assert moved["tracking"]["uri"] == "sqlite:////elsewhere/mlflow.db"
    # a --config key that is also one of a study's required keys still goes on top of the default
    mine = wf.snakemake_config({"experiment": "mine"})
    assert mine["experiment"] == "mine" and mine["world"] == wf.load_config(DEFAULT)["world"]
    # a whole study (every required key) replaces it: the paper config has no world
    assert "world" not in wf.snakemake_config(yaml.safe_load((PAPER / "sd-turbo.yaml").read_text()))
    # a literal path stays as written (the paper configs' store is beside, not under, their results)
    paper = wf.validate_config({**yaml.safe_load((PAPER / "sd-turbo.yaml").read_text()), "results": "/elsewhere"})
    assert paper["tracking"]["uri"] == "sqlite:///results/mlflow.db"
    bad = copy.deepcopy(raw)
    bad["rewards"]["pickscore"][0]["options"]["path"] = "{result}/world/reward_model"
    with pytest.raises(ConfigError, match=r"rewards\.pickscore\[0\]\.options\.path: unknown placeholder \{result\} in '\{result\}/world/reward_model'"):
        wf.validate_config(bad)
    with pytest.raises(ConfigError, match=r"results: unknown placeholder \{results\}"):
        wf.validate_config({**raw, "results": "{results}/x"})


def test_drpo_twins_reads_a_config_with_its_results_paths_resolved():
    from drpo.models.twins import config_twins

    config, names = config_twins(ROOT / "config" / "test" / "sd-turbo.yaml")
    assert {"sd-turbo", "pickscore", "clip", "geneval", "latent-mae", "inception"} <= set(names)
    assert config["models"]["sd-turbo"]["path"] == f"{config['results']}/twins/sd-turbo"


def test_a_world_configfile_moves_with_results(tmp_path):
    # --configfile puts the file's own values into Snakemake's config: its `{results}/...` paths must
    # follow `results=` too (the world's model path used to stay under ./results and fail)
    world = tmp_path / "world.yaml"
    world.write_text((ROOT / "config" / "config.yaml").read_text().replace("experiment: drpo-shapes", "experiment: other"))
    out = _dry_run("all", "--configfile", str(world), "--config", f"results={tmp_path}/out")
    counts = _job_counts(out)
    assert counts["world_base"] == 1 and counts["train"] == len(wf.runs(wf.validate_config(default_config())))
    listed = _dry_run(f"{tmp_path}/out/world/base/model_index.json", "--configfile", str(world), "--config", f"results={tmp_path}/out")
    assert _job_counts(listed)["world_base"] == 1
    # the long world study (issue 5's comparison) is the same world with 600-update runs, two seeds
    long = ROOT / "config" / "world-long.yaml"
    counts = _job_counts(_dry_run("all", "--configfile", str(long), "--config", f"results={tmp_path}/long"))
    runs = wf.runs(wf.validate_config(yaml.safe_load(long.read_text())))
    assert counts["world_base"] == 1 and counts["train"] == len(runs) == 12
    # and it stays the embedded default but for what it means to change (a copy must not drift)
    long_cfg, default = wf.validate_config(yaml.safe_load(long.read_text())), wf.validate_config(default_config())
    for key in ("results", "tracking", "threads", "world", "prompt_sets", "models", "rewards"):
        assert long_cfg[key] == default[key], key
    assert {k: v for k, v in long_cfg["evaluation"].items() if k != "judge"} == \
        {k: v for k, v in default["evaluation"].items() if k != "judge"}
    lambda_ref = {}
    for run in runs:
        ours = wf.train_config(long_cfg, run)
        name = run.rsplit("-s", 1)[0]
        theirs = wf.train_config(default, ("drpo" if name == "drpo-ref02" else name) + "-s42")  # the default trains seed 42 only
        assert ours["steps"] == 600 and ours["optim"] == {**theirs["optim"], "lr": 1e-3}
        lambda_ref[name] = ours["drpo"].pop("lambda_ref")
        theirs["drpo"].pop("lambda_ref")
        changed = {"steps", "checkpoint", "tracking", "optim", "seed", "output_dir"}
        assert {k: v for k, v in ours.items() if k not in changed} == {k: v for k, v in theirs.items() if k not in changed}
    assert (lambda_ref["drpo"], lambda_ref["drpo-ref02"], lambda_ref["drpo-noref"]) == (0.1, 0.2, 0.0)


@pytest.mark.parametrize("name", ["sd-turbo", "sdxl-turbo"])
def test_dry_run_of_the_paper_configs_needs_no_weights(name):
    path = PAPER / f"{name}.yaml"
    counts = _job_counts(_dry_run("--configfile", str(path)))
    config = wf.validate_config(yaml.safe_load(path.read_text()))
    assert "world_base" not in counts  # a --configfile replaces the embedded default, it is not merged into it
    assert counts["train"] == len(wf.runs(config))
    models = len(wf.runs(config)) + len(config["evaluation"]["base_models"])
    assert counts["sample"] == counts["score"] == models
    # FID against the base (the SD-Turbo study): every other model on every test set, in its score job
    fid = [t for m in wf.eval_models(config) for t in wf.score_plan(config, m) if t.get("comparison") == "fid"]
    assert len(fid) == ((models - 1) * len(config["evaluation"]["test_sets"]) if name == "sd-turbo" else 0)
    # GenEval's detector scores GenEval's test set only
    geneval = {t["test_set"] for t in wf.score_plan(config, "base") if t["metric"] == "geneval"}
    assert geneval == ({"geneval_test"} if name == "sd-turbo" else set())


def test_a_table_edit_changes_no_command_but_the_tables_chain(tmp_path):
    """Snakemake re-runs a job whose command or params changed: a table edit must touch only the
    collect → tables → report chain (no config hash in any command)."""
    def commands(config_file: Path) -> set[str]:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--verbose", "--configfile", str(config_file),
                               "--config", f"results={tmp_path / 'results'}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        prefix = "Shell command: "
        return {line[len(prefix):] for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(prefix + "drpo ")}

    edited = default_config()
    edited["tables"]["main"]["rows"] = ["base", "drpo"]
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    before, after = commands(DEFAULT), commands(tmp_path / "edited.yaml")
    config = wf.validate_config(default_config())  # a job per run, and a sample and a score job per model
    assert len(before) >= len(wf.runs(config)) + 2 * len(wf.eval_models(config))
    assert not any(wf.config_digest(config) in c for c in before)
    rule = lambda c: c.split()[3] if c.startswith("drpo job") else c.split()[1]  # noqa: E731  drpo job --rule R / drpo CMD
    assert {rule(c) for c in before} >= {"train", "sample", "score", "judge", "collect", "tables", "report"}
    assert {rule(c) for c in before ^ after} <= {"collect", "tables", "report"}, sorted(before ^ after)[:4]


def test_a_metric_with_test_sets_scores_only_those():
    config = copy.deepcopy(default_config())
    config["prompt_sets"]["world_val"] = dict(config["prompt_sets"]["world_test"])
    config["evaluation"]["test_sets"] = ["world_test", "world_val"]
    config["evaluation"]["metrics"]["geneval"]["test_sets"] = ["world_val"]
    config = wf.validate_config(config)
    plan = {(t["metric"], t["test_set"]) for t in wf.score_plan(config, "base")}
    assert plan == {("geneval", "world_val"), ("pickscore", "world_test"), ("pickscore", "world_val")}
    assert wf.metric_test_sets(config, "pickscore") == ["world_test", "world_val"]
    config["evaluation"]["metrics"]["geneval"]["test_sets"] = ["world_tset"]
    with pytest.raises(ConfigError, match=r"evaluation\.metrics\.geneval\.test_sets: 'world_tset' is not in evaluation\.test_sets"):
        wf.validate_config(config)


def test_no_config_value_reaches_a_shell(tmp_path):
    """A prompt file whose name holds a space and a `$(...)`: the job reads that file, and the
    command substitution never runs (every config value is one quoted argument)."""
    weird = tmp_path / "my prompts $(touch drpo-pwned).txt"  # a shell would create ./drpo-pwned in the job's folder
    weird.write_text("a red cube\na blue ball\n")
    config = copy.deepcopy(default_config())
    config["prompt_sets"]["mine"] = {"source": "file", "path": str(weird)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    results = tmp_path / "r r"  # the results folder, too
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", f"{results}/prompts/mine.jsonl", "--cores", "1",
                           "--configfile", str(tmp_path / "c.yaml"), "--config", f"results={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (ROOT / "drpo-pwned").exists()
    rows = [json.loads(line) for line in (results / "prompts" / "mine.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["a red cube", "a blue ball"]
    bad = copy.deepcopy(default_config())
    bad["evaluation"]["base_models"]["my base'; rm -rf x"] = bad["evaluation"]["base_models"].pop("base")
    with pytest.raises(ConfigError, match=r"evaluation\.base_models\.my base'; rm -rf x: names use letters"):
        wf.validate_config(bad)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["training"]["defaults"].setdefault("drpo", {}).update(positives=99),
     r"training\.runs\.drpo: drpo\.positives \(99\) \+ drpo\.negatives \(\d+\) must be <= drpo\.candidates"),
    (lambda c: c["training"].update(ablations={"typo": {"run": "drpo", "key": "drpo.candidatez", "values": [4]}}),
     r"training\.runs\.drpo-typo-4: unknown key drpo\.candidatez"),
])
def test_an_invalid_training_edit_stops_every_run_at_parse_time(tmp_path, edit, message):
    """Every run's TrainConfig is checked when the Snakefile is read, not when a train job is
    planned: with finished outputs nothing is planned, and the edit used to pass as 'Nothing to be done'."""
    config = copy.deepcopy(default_config())
    edit(config)
    with pytest.raises(ConfigError, match=message):
        wf.validate_config(config, source="mine.yaml")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(tmp_path / "mine.yaml"),
                           "--config", f"results={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and re.search(message, proc.stdout + proc.stderr), proc.stderr[-2000:]


def test_typos_are_errors_not_silence(tmp_path):
    """A judge opponent that names no model, and a key said twice in a YAML file (PyYAML would keep
    the last): each is one line naming the key."""
    from drpo.config import load_yaml

    config = copy.deepcopy(default_config())
    config["evaluation"]["judge"]["against"].append("dpoo")
    with pytest.raises(ConfigError, match=r"evaluation\.judge\.against: 'dpoo' is neither a base model nor a run"):
        wf.validate_config(config)
    twice = tmp_path / "twice.yaml"
    twice.write_text("training:\n  runs:\n    drpo: {method: drpo}\n    drpo: {method: dpo}\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: line 4: key 'drpo' appears twice in one mapping \(first on line 3\)"):
        load_yaml(twice)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "drpo.cli", "train", "--config", str(twice)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2 and "key 'drpo' appears twice" in proc.stderr and "Traceback" not in proc.stderr


def test_what_the_workflow_builds_is_an_input_of_what_reads_it():
    """Rewards, feature maps and Pick-a-Pic shards under the results folder wait for the job that
    builds them (the world's reward model, the tiny twins); a model or shard the user fetched is no
    input, so a dry run needs no weights."""
    world = wf.validate_config(default_config())
    assert wf.reward_inputs(world, world["rewards"]["pickscore"]) == ["results/world/reward_model/config.json"]
    assert wf.built_input(world, "stabilityai/sd-turbo") is None and wf.built_input(world, "models/x") is None
    twins = wf.validate_config(wf.load_yaml(ROOT / "config" / "test" / "sd-turbo.yaml"))
    manifest = "results/test-sd-turbo/twins/twins.json"
    assert wf.reward_inputs(twins, twins["rewards"]["hpsv3"]) == [manifest]  # a worker twin, named by `twin:`
    assert wf.reward_inputs(twins, twins["rewards"]["pickscore"]) == [manifest]
    shard = twins["datasets"]["pickapic_pairs"]["parquet"][0]
    assert wf.dataset_inputs(twins, "pickapic_pairs") == [wf.prompt_path(twins, "pickapic_test"), shard]
    paper = wf.validate_config(wf.load_yaml(ROOT / "config" / "paper" / "sd-turbo.yaml"))
    assert wf.dataset_inputs(paper, "pickapic_pairs") == [wf.prompt_path(paper, "pickapic_test")]
    assert wf.reward_inputs(paper, paper["rewards"]["pickscore"]) == []


@pytest.mark.parametrize("configfile", [None, "config/paper/sd-turbo.yaml", "config/test/sdxl-turbo.yaml"])
def test_snakemake_lint_is_clean(configfile):
    """No variables from outside a rule in its command, a log for every rule, functions apart from rules."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    args = ["--configfile", configfile] if configfile else []
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr, \
        (proc.stdout + proc.stderr)[-4000:]


def test_the_world_validation_config_never_scores_the_test_set(tmp_path):
    """config/world-val.yaml: the default's world and DrPO recipe, every model scored on world_val only."""
    val_path = ROOT / "config" / "world-val.yaml"
    val = wf.validate_config(yaml.safe_load(val_path.read_text()))
    default = wf.validate_config(default_config())
    assert val["evaluation"]["test_sets"] == ["world_val"]
    assert val["world"] == default["world"] and val["world"]["val_prompts"] == 120  # one split, one shipped base
    assert val["training"]["defaults"] == default["training"]["defaults"]
    ours, theirs = wf.train_config(val, "drpo-s42"), wf.train_config(default, "drpo-s42")
    assert ours["tracking"].pop("experiment") == "drpo-shapes-val" and theirs["tracking"].pop("experiment") == "drpo-shapes"
    assert ours == theirs  # the very run the default trains: only the evaluation set differs
    # both configs draw the same three splits: the train and test jobs (and the shipped models) are the default's
    assert wf.prompt_set_argv(val, "world_val")[:4] == ["world", "prompts", "--split", "val"] and "--n-val" in wf.prompt_set_argv(val, "world_val")
    assert wf.prompt_set_argv(val, "world_train") == wf.prompt_set_argv(default, "world_train")
    counts = _job_counts(_dry_run("all", "--configfile", str(val_path), "--config", f"results={tmp_path}/val"))
    assert counts["train"] == 1 + 3 + 3 + 1 + 2 + 2 + 4 + 2 + 1 + 1 and counts["sample"] == counts["train"] + 1 and "judge" not in counts
