# Evaluation: sample every model on every test set, score every sample set with every metric,
# and judge DrPO against the others pairwise.

# One job per model draws every test set: the generator loads once.
rule sample:
    input:
        unpack(lambda w: wf.sample_inputs(config, w.model)),
    output:
        expand(L.manifest("{test_set}", "{{model}}"), test_set=TEST_SETS),
    params:
        args=lambda w: wf.sample_argv(config, w.model),
        out=lambda w, output: [os.path.dirname(m) for m in output],
        seeds=",".join(map(str, config["evaluation"]["seeds"])),
    threads: THREADS
    resources:
        gpus=0,
    log:
        L.log("sample", "{model}"),
    conda:
        "../../envs/core.yaml"
    shell:
        job("sample", model="{wildcards.model}")
        + "drpo sample {params.args:q} --prompts {input.prompts:q} --seeds {params.seeds} --out {params.out:q} "
        "--threads {threads} --no-progress > {log:q} 2>&1"


# What one model's score job computes (every metric on its test sets, FID / distance against the
# reference), as a file: a changed metric re-runs this rule (params) and the model's score job.
rule score_plan:
    output:
        L.score_plan("{model}"),
    params:
        tasks=lambda w: wf.score_plan(config, w.model),
    log:
        L.log("score_plan", "{model}"),
    run:
        wf.write_score_plan(config, wildcards.model, output[0])


# One job per model scores every metric on every test set (each reward model loads once). The
# summaries land at scores/<test set>/<model>/<metric>.json; the job's output is the list of them,
# written last, so per-image scores of a killed job survive for its re-run.
rule score:
    input:
        unpack(lambda w: wf.score_inputs(config, w.model)),
    output:
        L.score_done("{model}"),
    threads: THREADS
    resources:
        gpus=0,
    log:
        L.log("score", "{model}"),
    conda:
        "../../envs/core.yaml"
    shell:
        job("score", model="{wildcards.model}") + "drpo score --plan {input.plan:q} --done {output:q} --threads {threads} --no-progress > {log:q} 2>&1"


rule judge:
    input:
        a=L.manifest("{test_set}", "{a}"),
        b=L.manifest("{test_set}", "{b}"),
    output:
        judgements=L.judgements("{test_set}", "{a}", "{b}"),
        summary=L.judge_summary("{test_set}", "{a}", "{b}"),
    params:
        args=lambda w: wf.judge_argv(config),
    wildcard_constraints:
        a="|".join(map(re.escape, MODELS)),
        b="|".join(map(re.escape, MODELS)),
    resources:
        gpus=0,
    log:
        L.log("judge", "{test_set}", "{a}__vs__{b}"),
    conda:
        "../../envs/judge.yaml"
    shell:
        job("judge", test_set="{wildcards.test_set}", a="{wildcards.a}", b="{wildcards.b}") + "drpo judge --a {input.a:q} --b {input.b:q} {params.args:q} --out {output.judgements:q} "
        "--summary {output.summary:q} > {log:q} 2>&1"
