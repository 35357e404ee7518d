# Prompt sets: the world's grammar, GenEval's grammar (training prompts), the public sets from the
# copies packaged in drpo/data/public/ (or a `local_dir:` override), checked by sha256, or a user's
# file. `exclude:` names sets that must stay disjoint (a public set drops their prompts, a file errs).


rule prompt_set:
    input:
        lambda w: wf.prompt_set_inputs(config, w.prompt_set),
    output:
        L.prompts("{prompt_set}"),
    params:
        args=lambda w: wf.prompt_set_argv(config, w.prompt_set),
    log:
        L.log("prompts", "{prompt_set}"),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo {params.args:q} --out {output:q} > {log:q} 2>&1"


rule pickapic_pairs:
    input:
        lambda w: wf.dataset_inputs(config, w.dataset),
    output:
        L.dataset_pairs("{dataset}"),
    params:
        args=lambda w: wf.dataset_argv(config, w.dataset),
        out=lambda w: L.dataset(w.dataset),
    log:
        L.log("datasets", "{dataset}"),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo prompts pickapic-pairs {params.args:q} --out {params.out:q} > {log:q} 2>&1"
