# Prompt sets: the world's grammar, GenEval's grammar (training prompts), the public sets from the
# copies packaged in drpo/data/public/ (or a `local_dir:` override), checked by sha256, or a user's
# file. `exclude:` names sets that must stay disjoint (a public set drops their prompts, a file errs).


def prompt_set_excludes(wildcards):
    spec = config["prompt_sets"][wildcards.prompt_set]
    return [wf.prompt_path(config, name) for name in spec.get("exclude", [])]


def prompt_set_args(wildcards):
    spec = config["prompt_sets"][wildcards.prompt_set]
    local = f" --local-dir {spec['local_dir']}" if spec.get("local_dir") else ""
    excludes = prompt_set_excludes(wildcards)
    exclude = f" --exclude {' '.join(excludes)}" if excludes else ""
    if spec["source"] == "world":
        w = config["world"]
        return (
            f"world prompts --split {spec.get('split', 'test')} --n-train {w['train_prompts']} "
            f"--n-test {w['test_prompts']} --seed {w['seed']}"
        )
    if spec["source"] == "geneval_grammar":
        return f"prompts geneval-grammar --n {spec.get('n', 2000)} --seed {spec.get('seed', 1)}{local}{exclude}"
    if spec["source"] == "file":
        return f"prompts prepare file --path {spec['path']}{exclude}"
    return f"prompts prepare {spec['source']}{local}{exclude}"


rule prompt_set:
    input:
        prompt_set_excludes,
    output:
        f"{R}/prompts/{{prompt_set}}.jsonl",
    params:
        args=prompt_set_args,
    log:
        f"{R}/logs/prompts/{{prompt_set}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo {params.args} --out {output} > {log} 2>&1"


def dataset_args(wildcards):
    spec = config["datasets"][wildcards.dataset]
    if spec.get("source") != "pickapic_v2" or not spec.get("parquet"):
        raise ValueError(f"datasets.{wildcards.dataset}: only source pickapic_v2 with parquet files is built by the workflow")
    excludes = [wf.prompt_path(config, name) for name in spec.get("exclude", [])]
    args = f"--parquet {' '.join(spec['parquet'])}"
    if spec.get("max_pairs"):
        args += f" --max-pairs {spec['max_pairs']}"
    if excludes:
        args += f" --exclude-prompts {' '.join(excludes)}"
    return args


rule pickapic_pairs:
    input:
        lambda w: [wf.prompt_path(config, n) for n in config["datasets"][w.dataset].get("exclude", [])],
    output:
        f"{R}/datasets/{{dataset}}/pairs.jsonl",
    params:
        args=dataset_args,
        out=lambda w: f"{R}/datasets/{w.dataset}",
    log:
        f"{R}/logs/datasets/{{dataset}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo prompts pickapic-pairs {params.args} --out {params.out} > {log} 2>&1"
