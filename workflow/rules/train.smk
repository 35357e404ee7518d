# Training: one job per run and seed. The run's full TrainConfig is written first (and checked),
# so a changed config re-runs exactly the runs it changes.


rule train_config:
    output:
        L.train_config("{run}"),
    params:
        cfg=lambda w: wf.train_config(config, w.run),
    log:
        L.log("train_config", "{run}"),
    run:
        wf.write_train_config(config, wildcards.run, output[0])


rule train:
    input:
        unpack(lambda w: wf.run_inputs(config, w.run)),
    output:
        final=L.final_state("{run}"),
        metrics=L.run_metrics("{run}"),  # every logged step, also when MLflow is unreachable
    params:
        launch=lambda w: wf.launch_command(config, w.run),
    threads: THREADS
    resources:
        # the run's launcher (training.runs.<run>.launcher, else training.launcher): `gpu` is what
        # the SLURM plugin turns into sbatch --gpus; `gpus` is what `drpo job` pins
        gpu=lambda w: wf.launcher(config, w.run)["gpus"],
        gpus=lambda w: wf.launcher(config, w.run)["gpus"],
    log:
        L.log("train", "{run}"),
    conda:
        "../../envs/core.yaml"
    shell:
        job("train", run="{wildcards.run}") + "{params.launch} train --config {input.cfg:q} --resume --no-progress "
        "--threads {threads} > {log:q} 2>&1"


# §6.3's timing run: DrPO and DRaFT from their runs' configs, re-pointed at evaluation.timing's
# reward, candidates and effective batch, timed interleaved in one job (drpo bench timing).
TIMING = L.timing() if wf.timing_runs(config) else None


rule timing_config:
    output:
        L.timing_config("{method}"),
    wildcard_constraints:
        method="drpo|draft",
    params:
        cfg=lambda w: wf.timing_config(config, w.method),
    log:
        L.log("timing_config", "{method}"),
    run:
        wf.write_timing_config(config, wildcards.method, output[0])


rule timing:
    input:
        drpo=L.timing_config("drpo"),
        draft=L.timing_config("draft"),
        needs=lambda w: wf.timed_inputs(config),
    output:
        L.timing(),
    params:
        repeats=config["evaluation"].get("timing", {}).get("repeats", 3),
        warmup=config["evaluation"].get("timing", {}).get("warmup", 1),
    threads: THREADS
    resources:
        gpu=1 if wf.uses_gpu(config) else 0,
        gpus=1 if wf.uses_gpu(config) else 0,
    log:
        L.log("timing"),
    conda:
        "../../envs/core.yaml"
    shell:
        job("timing") + "drpo bench timing --drpo {input.drpo:q} --draft {input.draft:q} --repeats {params.repeats} "
        "--warmup {params.warmup} --threads {threads} --out {output:q} > {log:q} 2>&1"
