# The shapes world: its base one-step generator, its reward model (the world's PickScore) and
# the offline variant's preference pairs. Only configs with a `world:` block use these rules.

W = config.get("world", {})


rule world_base:
    input:
        f"{R}/prompts/world_train.jsonl",
    output:
        f"{R}/world/base/model_index.json",
    params:
        out=f"{R}/world/base",
        base=W.get("base", {}),
    threads: 2
    resources:
        gpus=0,
    log:
        f"{R}/logs/world/base.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("world_base") + "drpo world train-base --prompts {input:q} --out {params.out:q} "
        "--resolution {W[resolution]} --vae-steps {params.base[vae_steps]} --regression-steps {params.base[regression_steps]} "
        "--seed {W[seed]} --threads {threads} > {log:q} 2>&1"


rule world_reward_model:
    input:
        f"{R}/prompts/world_train.jsonl",
    output:
        f"{R}/world/reward_model/config.json",
    params:
        out=f"{R}/world/reward_model",
    threads: 1
    resources:
        gpus=0,
    log:
        f"{R}/logs/world/reward_model.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("world_reward_model") + "drpo world train-reward --prompts {input:q} --out {params.out:q} "
        "--resolution {W[resolution]} --steps {W[reward_model_steps]} --seed {W[seed]} --threads {threads} > {log:q} 2>&1"


rule world_pairs:
    input:
        f"{R}/prompts/world_train.jsonl",
    output:
        f"{R}/world/pairs/pairs.jsonl",
    log:
        f"{R}/logs/world/pairs.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo world pairs --prompts {input:q} --out {output:q} --n {W[offline_pairs]} "
        "--resolution {W[resolution]} --seed {W[seed]} > {log:q} 2>&1"
