# One MLflow parent run per workflow invocation; every job's child run hangs under it.
# (onstart runs after the DAG is built and never in a dry run.)


onstart:
    from drpo.tracking import start_workflow_run

    # DRPO_PRELOAD=1: one warm interpreter runs this machine's jobs (drpo/preload.py)
    if os.environ.get("DRPO_PRELOAD") == "1":
        from drpo import preload

        preload.start(log=f"{R}/logs/preload.log")

    os.environ["DRPO_MLFLOW_URI"] = config["tracking"]["uri"]
    os.environ["DRPO_MLFLOW_EXPERIMENT"] = config["experiment"]
    os.environ["DRPO_CONFIG_HASH"] = CONFIG_HASH  # jobs tag their MLflow runs with it (drpo job)
    os.environ["DRPO_MLFLOW_PARENT_RUN_ID"] = start_workflow_run(
        config["tracking"]["uri"], config["experiment"], CONFIG_HASH, run_name=f"workflow-{CONFIG_HASH}"
    ) or ""


def stop_preload():
    from drpo import preload

    preload.stop()


onsuccess:
    from drpo.tracking import end_workflow_run

    stop_preload()
    end_workflow_run(os.environ.get("DRPO_MLFLOW_PARENT_RUN_ID", ""), "FINISHED")


onerror:
    from drpo.tracking import end_workflow_run

    stop_preload()
    end_workflow_run(os.environ.get("DRPO_MLFLOW_PARENT_RUN_ID", ""), "FAILED")


def model_inputs(model_name):
    """The workflow-built files a generator needs (nothing for external models)."""
    marker = wf.model_marker(config, model_name)
    return [marker] if marker else []


def reward_inputs(specs):
    """Reward models the workflow builds itself (the world's reward model, the tiny twins)."""
    return wf.reward_inputs(config, specs)
