# The prefix of every job's shell command: `drpo job`, which runs the command as an MLflow child run
# of this workflow invocation (drpo.workflow.workflow_started opens the parent run).


def job(name, **wildcards):
    """`drpo job` for the step `name`: an MLflow child run of this invocation, on the GPUs the step
    asks for (its `gpus` resource) when Snakemake runs it on a workstation."""
    wc = " ".join(f"{k}={v}" for k, v in wildcards.items())
    # the config hash reaches the job through $DRPO_CONFIG_HASH (set in onstart), not its command:
    # Snakemake re-runs a job whose command changed, and every config edit changes the hash
    return f"drpo job --rule {name} --wildcards '{wc}' --gpus {{resources.gpus}} -- "
