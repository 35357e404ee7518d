# The paper's tables and figures (METHOD.md §6), every cell traceable to the run behind it,
# and a self-contained HTML report. `snakemake --report` adds the workflow's own report.

SCORES = expand(f"{R}/scores/{{test_set}}/{{model}}/{{metric}}.json", test_set=TEST_SETS, model=list(MODELS), metric=METRICS)
COMPARED = [f"{R}/scores/{ts}/{model}/{name}.json" for ts, model, name in wf.compared(config)]
JUDGED = [f"{R}/judge/{ts}/{a}__vs__{b}.json" for ts in TEST_SETS for a, b in wf.judge_pairs(config)]
TRAINED = [f"{R}/runs/{rid}/final/training_state.json" for rid in RUNS]


rule collect:
    input:
        SCORES + COMPARED + JUDGED + TRAINED,
    output:
        f"{R}/results.csv",
    params:
        spec=wf.to_json(wf.collect_spec(config, JUDGED)),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo collect --spec {params.spec:q} --out {output}"


rule tables:
    input:
        results=f"{R}/results.csv",
        metrics=[f"{R}/runs/{rid}/metrics.jsonl" for rid in RUNS],
    output:
        index=report(f"{R}/tables/index.md", caption="../report/tables.rst", category="Tables"),
        # every configured table is a target of its own: results/tables/<name>.{csv,md,tex}
        tables=expand(f"{R}/tables/{{name}}.{{ext}}", name=list(config.get("tables", {})), ext=["csv", "md", "tex"]),
    params:
        out=f"{R}/tables",
        # reward curves of the runs that have a reward (run ids: labels may hold "=")
        curves=" ".join(f"{rid}={R}/runs/{rid}/metrics.jsonl" for rid, run in RUNS.items() if "reward" in run.spec),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo tables --results {input.results} --out {params.out} --curves {params.curves}"


rule report_html:
    input:
        rules.tables.output.index,
    output:
        f"{R}/report.html",
    params:
        tables=f"{R}/tables",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo report --tables {params.tables} --samples {R}/samples --out {output}"
