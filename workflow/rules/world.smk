# The shapes world: its base one-step generator, its reward model (the world's PickScore) and
# the offline variant's preference pairs. Only configs with a `world:` block use these rules.

from drpo.world.ship import BASE_THREADS, REWARD_THREADS

W = config.get("world", {})
# the world's models come from drpo/world/shipped when it holds this very recipe (`drpo world ship`)
SHIPPED = ["--shipped"] if W.get("shipped", True) else []


rule world_base:
    input:
        L.prompts("world_train"),
    output:
        f"{L.world_base()}/model_index.json",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        base=W.get("base", {}),
        world=W,
        shipped=SHIPPED,
    # fixed: the base's floating-point sums, and with them every number of the world's study, depend
    # on its thread count (the shipped base was built with the same count: drpo.world.ship)
    threads: BASE_THREADS
    resources:
        gpus=0,
    log:
        L.log("world", "base"),
    conda:
        "../../envs/core.yaml"
    shell:
        job("world_base") + "drpo world train-base --prompts {input:q} --out {params.out:q} "
        "--resolution {params.world[resolution]} --vae-steps {params.base[vae_steps]} --regression-steps {params.base[regression_steps]} "
        "--seed {params.world[seed]} --threads {threads} {params.shipped} > {log:q} 2>&1"


rule world_reward_model:
    input:
        L.prompts("world_train"),
    output:
        f"{L.world_reward_model()}/config.json",
    params:
        out=lambda w, output: os.path.dirname(output[0]),
        world=W,
        shipped=SHIPPED,
    threads: REWARD_THREADS
    resources:
        gpus=0,
    log:
        L.log("world", "reward_model"),
    conda:
        "../../envs/core.yaml"
    shell:
        job("world_reward_model") + "drpo world train-reward --prompts {input:q} --out {params.out:q} "
        "--resolution {params.world[resolution]} --steps {params.world[reward_model_steps]} --seed {params.world[seed]} "
        "--threads {threads} {params.shipped} > {log:q} 2>&1"


rule world_pairs:
    input:
        L.prompts("world_train"),
    output:
        L.world_pairs(),
    params:
        world=W,
    log:
        L.log("world", "pairs"),
    conda:
        "../../envs/core.yaml"
    shell:
        "drpo world pairs --prompts {input:q} --out {output:q} --n {params.world[offline_pairs]} "
        "--resolution {params.world[resolution]} --seed {params.world[seed]} > {log:q} 2>&1"
