"""The study's held-out numbers on MLflow runs, so the Compare view answers "did DrPO beat the baselines?".

`drpo collect` calls `log_study` after writing `results.csv` (when the workflow's MLflow store is set,
$DRPO_MLFLOW_URI): every evaluated model gets, on one run,

    eval/<test set>/<metric>              the mean (a reward, FID, distance)
    eval/<test set>/<metric>/ci_low|high  its 95 % bootstrap interval
    eval/<test set>/<metric>/geneval_overall   a checker's GenEval overall score (mean of tag accuracies),
                                          with /ci_low and /ci_high (stratified bootstrap)
    eval/<test set>/<metric>/geneval/<tag>     each tag's accuracy (with /ci_low, /ci_high)
    judge/<test set>/vs_<opponent>        the judge's preference share of this model over the opponent

A trained run's numbers go on its training run (found by its output folder); a base model gets a run
of its own (`drpo.kind: model`, named after the model), reused on the next workflow run. The
workflow's parent run gets `results.csv`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from drpo.contracts import Layout, read_judge_summary, read_score_summary

EVAL_PREFIX, JUDGE_PREFIX = "eval", "judge"


def model_metrics(spec: dict, model: str) -> dict[str, float]:
    """Every held-out number of one evaluated model, under the names above."""
    layout = Layout(spec["results"])
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and value == value:
            out[name] = float(value)

    for ts in spec["test_sets"]:
        for metric in spec["metrics"]:
            s = read_score_summary(layout.score_summary(ts, model, metric))
            if s is None:
                continue
            put(f"{EVAL_PREFIX}/{ts}/{metric}", s.mean)
            put(f"{EVAL_PREFIX}/{ts}/{metric}/ci_low", s.ci_low)
            put(f"{EVAL_PREFIX}/{ts}/{metric}/ci_high", s.ci_high)
            # a checker metric's GenEval summary (drpo score --reward ...), or a GenEval run's own
            geneval = s.geneval
            ci = geneval.get("ci95") or {}
            put(f"{EVAL_PREFIX}/{ts}/{metric}/geneval_overall", geneval.get("overall"))
            for end, k in (("ci_low", 0), ("ci_high", 1)):
                put(f"{EVAL_PREFIX}/{ts}/{metric}/geneval_overall/{end}", (ci.get("overall") or [None, None])[k])
            for tag, v in (geneval.get("tags") or {}).items():
                put(f"{EVAL_PREFIX}/{ts}/{metric}/geneval/{tag}", v.get("accuracy") if isinstance(v, dict) else v)
                for end, k in (("ci_low", 0), ("ci_high", 1)):
                    put(f"{EVAL_PREFIX}/{ts}/{metric}/geneval/{tag}/{end}", (ci.get(tag) or [None, None])[k])
    for j in spec.get("judged", []):
        if j["judged"] != model:
            continue
        s = read_judge_summary(j["path"])
        if s is None:
            continue
        name = f"{JUDGE_PREFIX}/{j['test_set']}/vs_{j['opponent']}"
        put(name, s.preference_share)
        ci = s.preference_share_ci95 or [None, None]
        put(f"{name}/ci_low", ci[0])
        put(f"{name}/ci_high", ci[1])
    return out


def _training_run(client, experiment_id: str, output_dir: Path):
    runs = client.search_runs([experiment_id], filter_string=f"tags.output_dir = '{output_dir.resolve()}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _model_run(client, experiment_id: str, model: str, label: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`drpo.kind` = 'model' and tags.`drpo.model` = '{model}'",
                              max_results=1)
    if runs:
        return runs[0]
    run = client.create_run(experiment_id, run_name=model, tags={"drpo.kind": "model", "drpo.model": model, "label": label})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run


def log_study(spec: dict, uri: str, experiment: str, parent_run_id: str | None = None,
              results_csv: str | Path | None = None) -> dict[str, str]:
    """Log every model's held-out numbers on its run; model id -> the run id that holds them."""
    import time

    from mlflow.entities import Metric

    from drpo.tracking import _client, ensure_experiment, resolve_uri

    uri = resolve_uri(uri)
    experiment_id = ensure_experiment(uri, experiment)
    client = _client(uri)
    now = int(time.time() * 1000)
    placed: dict[str, str] = {}
    for model, info in spec["models"].items():
        metrics = model_metrics(spec, model)
        if not metrics:
            continue
        run = None
        if info.get("kind") == "run":
            run = _training_run(client, experiment_id, Path(spec["results"]) / "runs" / model)
        run = run or _model_run(client, experiment_id, model, info.get("label", model))
        items = [Metric(k, v, now, 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(items), 1000):
            client.log_batch(run.info.run_id, metrics=items[i:i + 1000])
        client.set_tag(run.info.run_id, "label", info.get("label", model))
        placed[model] = run.info.run_id
    if parent_run_id and results_csv and Path(results_csv).exists():
        client.log_artifact(parent_run_id, str(results_csv))
    return placed
