# drpo — the DrPO study as one DAG: prompts -> (the world's base model, data, reward model)
# -> training (every method x model x reward x seed, and the ablation grids) -> sampling on each
# test set -> scoring -> judging -> the paper's tables, figures and report.
#
#   snakemake --cores all                                        # the embedded default (shapes world)
#   snakemake --cores all --configfile config/paper/sd-turbo.yaml   # the paper's SD-Turbo study
#   snakemake --profile workflow/profiles/slurm --configfile ...  # the same DAG on SLURM
#
# Rules are thin: each calls the `drpo` CLI. Logic lives in the drpo package.

import os
import re
import sys

from snakemake.utils import min_version

min_version("9.0")

# `shell:` rules call `drpo`: put this interpreter's environment first on PATH, so a venv works
# without being activated.
os.environ.update(PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))

from drpo import workflow as wf

# config/config.yaml is the embedded default. A --configfile replaces it (rather than being
# merged into it, Snakemake's default), so a paper config never inherits the shapes world;
# --config KEY=VALUE still overrides single keys of whichever file is used.
_files = [str(f) for f in workflow.overwrite_configfiles] or ["config/config.yaml"]
_loaded = {}
for _f in _files:
    _loaded = wf.deep_merge(_loaded, wf.load_yaml(_f))
# only the --config KEY=VALUE overrides go on top (`config` also holds the config file's own,
# un-rerooted values)
_overrides = dict(workflow.config_settings.config or {})
# `--config results=DIR` moves every output, the world's models and the SQLite store with it
if "results" in _overrides and _overrides["results"] != _loaded.get("results", "results"):
    _loaded = wf.reroot_results(_loaded, _loaded.get("results", "results"), _overrides["results"])
_validated = wf.validate_config(wf.deep_merge(_loaded, _overrides), source=", ".join(_files))
config.clear()
config.update(_validated)
R = wf.results_dir(config)
RUNS = wf.runs(config)
MODELS = wf.eval_models(config)
TEST_SETS = config["evaluation"]["test_sets"]
CONFIG_HASH = wf.config_digest(config)
THREADS = config["threads"]

wildcard_constraints:
    run="|".join(map(re.escape, RUNS)) if RUNS else "NONE",
    model="|".join(map(re.escape, MODELS)),
    test_set="|".join(map(re.escape, TEST_SETS)),
    prompt_set="[A-Za-z0-9_.-]+",


include: "workflow/rules/common.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/world.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/twins.smk"  # tiny twins of every model, only for a config with `twins:` (config/test/)


# one MLflow parent run per invocation (every job's child run hangs under it) and, with
# DRPO_PRELOAD=1, one warm interpreter for the jobs (drpo/preload.py)
onstart:
    wf.workflow_started(config, CONFIG_HASH)


onsuccess:
    wf.workflow_ended("FINISHED")


onerror:
    wf.workflow_ended("FAILED")


rule all:
    input:
        rules.tables.output,
        f"{R}/report.html",
    default_target: True
