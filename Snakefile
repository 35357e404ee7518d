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

# No `configfile:` directive: Snakemake would merge a --configfile into it, and a paper config would
# inherit the shapes world. So `config` holds only --configfile / --config, and config/config.yaml is
# used when no file is given. `{results}` in a path follows `--config results=DIR` (drpo.workflow).
_validated = wf.snakemake_config(config, "config/config.yaml")
config.clear()
config.update(_validated)
R = wf.results_dir(config)
L = wf.layout(config)  # every path under R (drpo.contracts.Layout)
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
        L.report(),
    default_target: True
