# Training: one job per run and seed. The run's full TrainConfig is written first (and checked),
# so a changed config re-runs exactly the runs it changes.


def train_inputs(wildcards):
    run = RUNS[wildcards.run]
    spec = run.spec
    out = {"cfg": f"{R}/runs/{wildcards.run}/train.yaml", "model": model_inputs(spec["model"])}
    if "prompts" in spec:
        out["prompts"] = wf.prompt_path(config, spec["prompts"])
    if "reward" in spec:
        out["reward"] = reward_inputs(config["rewards"][spec["reward"]])
    if spec["method"] == "drpo_offline":
        out["dataset"] = wf.dataset_path(config, spec["dataset"])
    feature_model = wf.train_config(config, wildcards.run).get("features", {}).get("options", {}).get("path", "")
    if feature_model.startswith(R):  # a feature map the workflow builds (the world's CLIP)
        out["features"] = f"{feature_model}/config.json"
    return out


rule train_config:
    output:
        f"{R}/runs/{{run}}/train.yaml",
    params:
        cfg=lambda w: wf.train_config(config, w.run),
    run:
        wf.write_train_config(config, wildcards.run, output[0])


rule train:
    input:
        unpack(train_inputs),
    output:
        final=f"{R}/runs/{{run}}/final/training_state.json",
        metrics=f"{R}/runs/{{run}}/metrics.jsonl",  # every logged step, also when MLflow is unreachable
    params:
        launch=lambda w: wf.launch_command(config, w.run),
    threads: THREADS
    resources:
        # the run's launcher (training.runs.<run>.launcher, else training.launcher): `gpu` is what
        # the SLURM plugin turns into sbatch --gpus; `gpus` is what `drpo job` pins
        gpu=lambda w: wf.launcher(config, w.run)["gpus"],
        gpus=lambda w: wf.launcher(config, w.run)["gpus"],
    log:
        f"{R}/logs/train/{{run}}.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("train", run="{wildcards.run}") + "{params.launch} train --config {input.cfg} --resume --no-progress "
        "--threads {threads} > {log} 2>&1"
