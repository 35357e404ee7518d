# Evaluation: sample every model on every test set, score every sample set with every metric,
# and judge DrPO against the others pairwise.

SEEDS = ",".join(map(str, config["evaluation"]["seeds"]))


def sample_inputs(wildcards):
    m = MODELS[wildcards.model]
    out = {"prompts": wf.prompt_path(config, wildcards.test_set), "model": model_inputs(m["model"])}
    if m["kind"] == "run":
        out["lora"] = f"{R}/runs/{wildcards.model}/final/training_state.json"
    return out


def sample_args(wildcards):
    m = MODELS[wildcards.model]
    args = f"--model {config['models'][m['model']]['path']}"
    if m["kind"] == "run":
        args += f" --lora {R}/runs/{wildcards.model}/final"
    return args


rule sample:
    input:
        unpack(sample_inputs),
    output:
        f"{R}/samples/{{test_set}}/{{model}}/manifest.jsonl",
    params:
        args=sample_args,
        out=f"{R}/samples/{{test_set}}/{{model}}",
    threads: THREADS
    resources:
        gpus=0,
    log:
        f"{R}/logs/sample/{{test_set}}/{{model}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("sample", test_set="{wildcards.test_set}", model="{wildcards.model}")
        + "drpo sample {params.args} --prompts {input.prompts} --seeds {SEEDS} --out {params.out} "
        "--threads {threads} --no-progress > {log} 2>&1"


rule score:
    input:
        manifest=f"{R}/samples/{{test_set}}/{{model}}/manifest.jsonl",
        reward=lambda w: reward_inputs([config["evaluation"]["metrics"][w.metric]]),
    output:
        scores=f"{R}/scores/{{test_set}}/{{model}}/{{metric}}.parquet",
        summary=f"{R}/scores/{{test_set}}/{{model}}/{{metric}}.json",
    params:
        reward=lambda w: config["evaluation"]["metrics"][w.metric]["name"],
        options=lambda w: wf.to_json(config["evaluation"]["metrics"][w.metric].get("options", {})),
    threads: THREADS
    resources:
        gpus=0,
    log:
        f"{R}/logs/score/{{test_set}}/{{model}}/{{metric}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("score", test_set="{wildcards.test_set}", model="{wildcards.model}", metric="{wildcards.metric}") + "drpo score --manifest {input.manifest} --reward {params.reward} --options {params.options:q} "
        "--metric {wildcards.metric} --out {output.scores} --summary {output.summary} --no-progress > {log} 2>&1"


def reference_of(wildcards):
    ref = wf.reference_model(config, wildcards.comparison, wildcards.model)
    if ref is None:
        raise ValueError(f"{wildcards.model} is the reference of evaluation.{wildcards.comparison}: it has no "
                         f"{wildcards.comparison} to itself")
    return ref


rule compare:
    """FID or feature distance of a model's samples against the reference model's (evaluation.fid,
    evaluation.distance)."""
    input:
        manifest=f"{R}/samples/{{test_set}}/{{model}}/manifest.jsonl",
        reference=lambda w: f"{R}/samples/{w.test_set}/{reference_of(w)}/manifest.jsonl",
        extractor=lambda w: reward_inputs([{"options": COMPARISONS[w.comparison]["options"]}]),
    output:
        summary=f"{R}/scores/{{test_set}}/{{model}}/{{comparison}}.json",
    params:
        flag=lambda w: COMPARISONS[w.comparison]["flag"],
        args=lambda w: COMPARISONS[w.comparison]["args"],
    wildcard_constraints:
        comparison="|".join(COMPARISONS) if COMPARISONS else "NONE",
    threads: THREADS
    resources:
        gpus=0,
    log:
        f"{R}/logs/compare/{{test_set}}/{{model}}/{{comparison}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("compare", test_set="{wildcards.test_set}", model="{wildcards.model}", comparison="{wildcards.comparison}")
        + "drpo score --manifest {input.manifest} {params.flag} {input.reference} {params.args} "
        "--summary {output.summary} --no-progress > {log} 2>&1"


rule judge:
    input:
        a=f"{R}/samples/{{test_set}}/{{a}}/manifest.jsonl",
        b=f"{R}/samples/{{test_set}}/{{b}}/manifest.jsonl",
    output:
        judgements=f"{R}/judge/{{test_set}}/{{a}}__vs__{{b}}.jsonl",
        summary=f"{R}/judge/{{test_set}}/{{a}}__vs__{{b}}.json",
    params:
        args=lambda w: wf.judge_args(config),
    wildcard_constraints:
        a="|".join(map(re.escape, MODELS)),
        b="|".join(map(re.escape, MODELS)),
    resources:
        gpus=0,
    log:
        f"{R}/logs/judge/{{test_set}}/{{a}}__vs__{{b}}.log",
    conda:
        "../../envs/judge.yaml"
    shell:
        job("judge", test_set="{wildcards.test_set}", a="{wildcards.a}", b="{wildcards.b}") + "drpo judge --a {input.a} --b {input.b} {params.args} --out {output.judgements} "
        "--summary {output.summary} > {log} 2>&1"
