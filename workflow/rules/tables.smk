# The paper's tables and figures (METHOD.md §6), every cell traceable to the run behind it,
# and a self-contained HTML report. Each table is drawn by the builder its config spec names
# (`builder:`), beside the paper table it names (`paper:`), if any. `snakemake --report` adds
# the workflow's own report.

SCORED = [L.score_done(model) for model in MODELS]  # one score job per model
JUDGED = [j["path"] for j in wf.judge_summaries(config)]
TRAINED = [L.final_state(rid) for rid in RUNS]


# What collect gathers and how each table is drawn (builder, paper table, rows), as a file: a
# changed spec re-runs this rule (params) and, through its output, collect and tables.
rule collect_spec:
    output:
        L.collect_spec(),
    params:
        spec=wf.to_json(wf.collect_spec(config)),
    log:
        L.log("collect_spec"),
    run:
        wf.write_collect_spec(config, output[0])


rule collect:
    input:
        summaries=SCORED + JUDGED + TRAINED + ([TIMING] if TIMING else []),
        spec=rules.collect_spec.output[0],
    output:
        L.results_csv(),
    log:
        L.log("collect"),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo collect --spec {input.spec:q} --out {output:q} > {log:q} 2>&1"


rule tables:
    input:
        results=L.results_csv(),
        spec=rules.collect_spec.output[0],
        metrics=[L.run_metrics(rid) for rid in RUNS],
    output:
        index=report(L.table("index", "md"), caption="../report/tables.rst", category="Tables"),
        # every configured table is a target of its own: results/tables/<name>.{csv,md,tex}
        tables=[report(L.table(name, "csv"), caption="../report/table.rst", category="Tables", subcategory=name,
                       labels={"table": name, "format": "csv"}) for name in config.get("tables", {})]
        + [L.table(name, ext) for name in config.get("tables", {}) for ext in ("md", "tex")],
        figures=[report(png, caption="../report/figures.rst", category="Figures", labels={"figure": name})
                 for name, png in wf.table_figures(config).items()],
    params:
        out=lambda w, output: os.path.dirname(output.index),
        # reward curves of the runs that have a reward (run ids: labels may hold "=")
        curves=[f"{rid}={L.run_metrics(rid)}" for rid, run in RUNS.items() if "reward" in run.spec],
    log:
        L.log("tables"),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo tables --results {input.results:q} --spec {input.spec:q} --out {params.out:q} --curves {params.curves:q} "
        "> {log:q} 2>&1"


rule report_html:
    input:
        index=rules.tables.output.index,
        spec=rules.collect_spec.output[0],
        samples=[L.manifest(ts, m) for ts in TEST_SETS for m in MODELS],
    output:
        html=report(L.report(), caption="../report/report.rst", category="Report", labels={"page": "report.html"}),
        grids=[report(png, caption="../report/grids.rst", category="Samples", subcategory=ts,
                      labels={"test set": ts, "model": MODELS[m]["label"]}) for (ts, m), png in wf.sample_grids(config).items()],
    params:
        tables=lambda w, input: os.path.dirname(input.index),
        samples=lambda w, input: os.path.dirname(os.path.dirname(os.path.dirname(input.samples[0]))),
        grids=lambda w, output: os.path.dirname(os.path.dirname(output.grids[0])),
    log:
        L.log("report"),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo report --tables {params.tables:q} --samples {params.samples:q} --spec {input.spec:q} "
        "--grids {params.grids:q} --out {output.html:q} > {log:q} 2>&1"
