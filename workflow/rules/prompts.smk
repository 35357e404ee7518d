# Prompt sets: the world's grammar, GenEval's grammar (training prompts), the public sets from the
# copies packaged in drpo/data/public/ (or a `local_dir:` override), checked by sha256, or a user's
# file. `exclude:` names sets that must stay disjoint (a public set drops their prompts, a file errs).


rule prompt_set:
    input:
        lambda w: wf.prompt_set_inputs(config, w.prompt_set),
    output:
        f"{R}/prompts/{{prompt_set}}.jsonl",
    params:
        args=lambda w: wf.prompt_set_argv(config, w.prompt_set),
    log:
        f"{R}/logs/prompts/{{prompt_set}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo {params.args:q} --out {output:q} > {log:q} 2>&1"


rule pickapic_pairs:
    input:
        lambda w: wf.dataset_inputs(config, w.dataset),
    output:
        f"{R}/datasets/{{dataset}}/pairs.jsonl",
    params:
        args=lambda w: wf.dataset_argv(config, w.dataset),
        out=lambda w: f"{R}/datasets/{w.dataset}",
    log:
        f"{R}/logs/datasets/{{dataset}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo prompts pickapic-pairs {params.args:q} --out {params.out:q} > {log:q} 2>&1"
