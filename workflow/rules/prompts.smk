# Prompt sets: the world's grammar, or the public sets from a local copy checked by sha256.


def prompt_set_args(wildcards):
    spec = config["prompt_sets"][wildcards.prompt_set]
    if spec["source"] == "world":
        w = config["world"]
        n = w["train_prompts"] if spec.get("split") == "train" else w["test_prompts"]
        return (
            f"world prompts --split {spec.get('split', 'test')} --n-train {w['train_prompts']} "
            f"--n-test {w['test_prompts']} --seed {w['seed']}"
        )
    if spec["source"] == "file":
        return f"prompts prepare file --path {spec['path']}"
    local = f" --local-dir {spec['local_dir']}" if spec.get("local_dir") else ""
    return f"prompts prepare {spec['source']}{local}"


rule prompt_set:
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
