# Tiny twins of every model (config/test/*.yaml): one job builds every twin the config references
# under {results}/twins (`drpo twins`, drpo/models/twins.py) before anything loads a model. Active
# only when the config has a `twins:` block; a config without one never sees these rules.
#
# What depends on the twins: a generator through its model_index.json (common.smk's model_inputs), a
# feature map or reward folder through its config.json (run_inputs, reward_inputs). Two more hooks:
#   * reward_inputs (common.smk) asks for <path>/config.json of every reward path under results/; the
#     aesthetic head is a file, and the worker twins are named by `twin:`, not `path:`, so here a
#     reward whose options name a twin depends on the twins' manifest instead;
#   * pickapic_pairs (prompts.smk) does not list its parquet files as inputs, so for the twin Pick-a-Pic
#     shard it would not wait for the twins: twin_pickapic_pairs is the same rule with them as inputs.

if config.get("twins") is not None:
    from drpo.models import twins as twin_models

    TWINS_DIR = twin_models.twins_dir(config)
    TWIN_NAMES = list(twin_models.referenced(config, TWINS_DIR))
    TWINS_MANIFEST = f"{TWINS_DIR}/{twin_models.MANIFEST}"

    rule twins:
        output:
            twin_models.outputs(config, TWINS_DIR),
        params:
            names=TWIN_NAMES,
            out=TWINS_DIR,
            seed=int(config["twins"].get("seed", 0)),
        log:
            f"{R}/logs/twins.log",
        conda:
            "../../envs/core.yaml"
        shell:
            "drpo twins --out {params.out:q} --seed {params.seed} {params.names:q} > {log:q} 2>&1"

    _reward_inputs_without_twins = reward_inputs

    def reward_inputs(specs):
        """common.smk's reward_inputs, but a reward whose options name a twin waits for the twins."""
        out = []
        for spec in specs:
            if any(s.startswith(TWINS_DIR + "/") for s in twin_models._strings(spec.get("options", {}))):
                out.append(TWINS_MANIFEST)
            else:
                out.extend(_reward_inputs_without_twins([spec]))
        return out

    def twin_pair_inputs(wildcards):
        spec = config["datasets"][wildcards.dataset]
        return [wf.prompt_path(config, n) for n in spec.get("exclude", [])] + list(spec.get("parquet", []))

    use rule pickapic_pairs as twin_pickapic_pairs with:
        input:
            twin_pair_inputs,

    ruleorder: twin_pickapic_pairs > pickapic_pairs
