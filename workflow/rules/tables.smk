# The paper's tables and figures (METHOD.md §6), every cell traceable to the run behind it,
# and a self-contained HTML report. Each table is drawn by the builder its config spec names
# (`builder:`), beside the paper table it names (`paper:`), if any. `snakemake --report` adds
# the workflow's own report.

SCORED = [f"{R}/scores/_done/{model}.json" for model in MODELS]  # one score job per model
JUDGED = [j["path"] for j in wf.judge_summaries(config)]
TRAINED = [f"{R}/runs/{rid}/final/training_state.json" for rid in RUNS]


# What collect gathers and how each table is drawn (builder, paper table, rows), as a file: a
# changed spec re-runs this rule (params) and, through its output, collect and tables.
rule collect_spec:
    output:
        f"{R}/collect_spec.json",
    params:
        spec=wf.to_json(wf.collect_spec(config)),
    run:
        wf.write_collect_spec(config, output[0])


rule collect:
    input:
        summaries=SCORED + JUDGED + TRAINED + ([TIMING] if TIMING else []),
        spec=rules.collect_spec.output[0],
    output:
        f"{R}/results.csv",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo collect --spec {input.spec:q} --out {output:q}"


rule tables:
    input:
        results=f"{R}/results.csv",
        spec=rules.collect_spec.output[0],
        metrics=[f"{R}/runs/{rid}/metrics.jsonl" for rid in RUNS],
    output:
        index=report(f"{R}/tables/index.md", caption="../report/tables.rst", category="Tables"),
        # every configured table is a target of its own: results/tables/<name>.{csv,md,tex}
        tables=expand(f"{R}/tables/{{name}}.{{ext}}", name=list(config.get("tables", {})), ext=["csv", "md", "tex"]),
    params:
        out=f"{R}/tables",
        # reward curves of the runs that have a reward (run ids: labels may hold "=")
        curves=[f"{rid}={R}/runs/{rid}/metrics.jsonl" for rid, run in RUNS.items() if "reward" in run.spec],
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo tables --results {input.results:q} --spec {input.spec:q} --out {params.out:q} --curves {params.curves:q}"


rule report_html:
    input:
        index=rules.tables.output.index,
        spec=rules.collect_spec.output[0],
    output:
        f"{R}/report.html",
    params:
        tables=f"{R}/tables",
        samples=f"{R}/samples",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo report --tables {params.tables:q} --samples {params.samples:q} --spec {input.spec:q} --out {output:q}"
