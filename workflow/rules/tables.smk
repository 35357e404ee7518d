# The paper's tables and figures (METHOD.md §6), every cell traceable to the run behind it,
# and a self-contained HTML report. `snakemake --report` adds the workflow's own report.

SCORES = expand(f"{R}/scores/{{test_set}}/{{model}}/{{metric}}.json", test_set=TEST_SETS, model=list(MODELS), metric=METRICS)
JUDGED = [f"{R}/judge/{ts}/{a}__vs__{b}.json" for ts in TEST_SETS for a, b in wf.judge_pairs(config)]
TRAINED = [f"{R}/runs/{rid}/final/training_state.json" for rid in RUNS]


rule collect:
    input:
        SCORES + JUDGED + TRAINED,
    output:
        f"{R}/results.csv",
    params:
        spec=wf.to_json({"models": MODELS, "results": R, "test_sets": TEST_SETS, "metrics": METRICS,
                         "judged": JUDGED, "runs": list(RUNS)}),
    shell:
        "drpo tables collect --spec {params.spec:q} --out {output}"


rule tables:
    input:
        f"{R}/results.csv",
    output:
        report(directory(f"{R}/tables"), caption="../report/tables.rst", category="Tables"),
        report(directory(f"{R}/figures"), caption="../report/figures.rst", category="Figures"),
    params:
        spec=wf.to_json(config.get("tables", {})),
    shell:
        "drpo tables build --results {input} --tables-spec {params.spec:q} --out {output[0]} --figures {output[1]}"


rule report_html:
    input:
        rules.tables.output,
    output:
        f"{R}/report.html",
    shell:
        "drpo tables report --tables {input[0]} --figures {input[1]} --out {output}"
