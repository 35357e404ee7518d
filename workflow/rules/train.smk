# Training: one job per run and seed. The run's full TrainConfig is written first (and checked),
# so a changed config re-runs exactly the runs it changes.


rule train_config:
    output:
        f"{R}/runs/{{run}}/train.yaml",
    params:
        cfg=lambda w: wf.train_config(config, w.run),
    log:
        f"{R}/logs/train_config/{{run}}.log",
    run:
        wf.write_train_config(config, wildcards.run, output[0])


rule train:
    input:
        unpack(lambda w: wf.run_inputs(config, w.run)),
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
        job("train", run="{wildcards.run}") + "{params.launch} train --config {input.cfg:q} --resume --no-progress "
        "--threads {threads} > {log:q} 2>&1"


# §6.3's timing run: DrPO and DRaFT from their runs' configs, re-pointed at evaluation.timing's
# reward, candidates and effective batch, timed interleaved in one job (drpo bench timing).
TIMING = f"{R}/timing/timing.json" if wf.timing_runs(config) else None


rule timing_config:
    output:
        f"{R}/timing/{{method}}.yaml",
    wildcard_constraints:
        method="drpo|draft",
    params:
        cfg=lambda w: wf.timing_config(config, w.method),
    log:
        f"{R}/logs/timing_config/{{method}}.log",
    run:
        wf.write_timing_config(config, wildcards.method, output[0])


rule timing:
    input:
        drpo=f"{R}/timing/drpo.yaml",
        draft=f"{R}/timing/draft.yaml",
        needs=lambda w: wf.timed_inputs(config),
    output:
        f"{R}/timing/timing.json",
    params:
        repeats=config["evaluation"].get("timing", {}).get("repeats", 3),
        warmup=config["evaluation"].get("timing", {}).get("warmup", 1),
    threads: THREADS
    resources:
        gpu=1 if wf.uses_gpu(config) else 0,
        gpus=1 if wf.uses_gpu(config) else 0,
    log:
        f"{R}/logs/timing.log",
    conda:
        "../../envs/core.yaml"
    shell:
        job("timing") + "drpo bench timing --drpo {input.drpo:q} --draft {input.draft:q} --repeats {params.repeats} "
        "--warmup {params.warmup} --threads {threads} --out {output:q} > {log:q} 2>&1"
