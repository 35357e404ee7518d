# Tiny twins of every model (config/test/*.yaml): one job builds every twin the config references
# under {results}/twins (`drpo twins`, drpo/models/twins.py) before anything loads a model. Active
# only when the config has a `twins:` block; a config without one never sees these rules.
#
# What depends on the twins: a generator through its model_index.json (common.smk's model_inputs);
# a reward, feature map or Pick-a-Pic shard under <results>/twins through the twins' manifest
# (drpo.workflow.built_input, used by reward_inputs, run_inputs and dataset_inputs).

if config.get("twins") is not None:
    from drpo.models import twins as twin_models

    TWINS_DIR = twin_models.twins_dir(config)
    TWIN_NAMES = list(twin_models.referenced(config, TWINS_DIR))

    rule twins:
        output:
            manifest=f"{TWINS_DIR}/{twin_models.MANIFEST}",
            files=[f for f in twin_models.outputs(config, TWINS_DIR) if f != f"{TWINS_DIR}/{twin_models.MANIFEST}"],
        params:
            names=TWIN_NAMES,
            out=lambda w, output: os.path.dirname(output.manifest),
            seed=int(config["twins"].get("seed", 0)),
        log:
            L.log("twins"),
        conda:
            "../../envs/core.yaml"
        shell:
            "drpo twins --out {params.out:q} --seed {params.seed} {params.names:q} > {log:q} 2>&1"
