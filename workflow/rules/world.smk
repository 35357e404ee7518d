# The shapes world: its base one-step generator, its reward model (the world's PickScore) and
# the offline variant's preference pairs. Only configs with a `world:` block use these rules.

W = config.get("world", {})


rule world_base:
    input:
        f"{R}/prompts/world_train.jsonl",
    output:
        f"{R}/world/base/model_index.json",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        base=W.get("base", {}),
        world=W,
    # fixed: the base's floating-point sums, and with them every number of the world's study, depend
    # on its thread count (1 thread beside the reward model was 4 min faster on 2 cores, and another base)
    threads: 2
    resources:
        gpus=0,
    log:
        f"{R}/logs/world/base.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("world_base") + "drpo world train-base --prompts {input:q} --out {params.out:q} "
        "--resolution {params.world[resolution]} --vae-steps {params.base[vae_steps]} --regression-steps {params.base[regression_steps]} "
        "--seed {params.world[seed]} --threads {threads} > {log:q} 2>&1"


rule world_reward_model:
    input:
        f"{R}/prompts/world_train.jsonl",
    output:
        f"{R}/world/reward_model/config.json",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        world=W,
    threads: 1
    resources:
        gpus=0,
    log:
        f"{R}/logs/world/reward_model.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("world_reward_model") + "drpo world train-reward --prompts {input:q} --out {params.out:q} "
        "--resolution {params.world[resolution]} --steps {params.world[reward_model_steps]} --seed {params.world[seed]} "
        "--threads {threads} > {log:q} 2>&1"


rule world_pairs:
    input:
        f"{R}/prompts/world_train.jsonl",
    output:
        f"{R}/world/pairs/pairs.jsonl",
    params:
        world=W,
    log:
        f"{R}/logs/world/pairs.log",
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo world pairs --prompts {input:q} --out {output:q} --n {params.world[offline_pairs]} "
        "--resolution {params.world[resolution]} --seed {params.world[seed]} > {log:q} 2>&1"
