"""MLflow tracking that can never stop a training job.

Every tracker appends its metrics to a local JSONL first (`<output_dir>/metrics.jsonl` for training),
then sends them to MLflow. If the tracking server is unreachable or any MLflow call fails, one
warning is printed and later MLflow calls are skipped: training goes on and nothing is lost.

Runs are organised as one experiment per workflow config, one parent run per workflow invocation
(`start_workflow_run`, called by the Snakefile's `onstart`) and one child run per job (`job_run`,
used by `drpo job`). `training_tracker(cfg)` logs into the job's run when `DRPO_MLFLOW_RUN_ID` is
set, under the parent when only `DRPO_MLFLOW_PARENT_RUN_ID` is set, else into a run of its own.

Several jobs start at once: experiment creation re-reads on "already exists", and with a SQLite
store the first contact (schema creation) and run creation are serialised by a lock file next to
the database. Relative SQLite paths are made absolute against the working directory, so every job
of a workflow writes to the same file. See the UI with
`mlflow ui --backend-store-uri sqlite:///results/mlflow.db --workers 1`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///results/mlflow.db"
ARTIFACTS_DIR = "mlartifacts"  # a SQLite store's artifacts: <db folder>/mlartifacts/<experiment>
# the MLflow UI opens an experiment of this kind on its training runs (not the GenAI overview)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
PARENT_ENV = "DRPO_MLFLOW_PARENT_RUN_ID"  # set by the workflow's onstart
RUN_ENV = "DRPO_MLFLOW_RUN_ID"  # set by `drpo job` for the command it runs
URI_ENV = "DRPO_MLFLOW_URI"
EXPERIMENT_ENV = "DRPO_MLFLOW_EXPERIMENT"

# Short HTTP timeouts so a dead server costs seconds, not minutes (MLflow's defaults: 120 s, 7 retries).
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
PROBE_TIMEOUT_S = 3.0
MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LEN = 8000
MAX_KEY_LEN = 250
_TRUNCATED = "...[truncated]"
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")

_WORKFLOW_URIS: dict[str, str] = {}  # parent run id -> uri, for end_workflow_run in the same process


# -- helpers ------------------------------------------------------------------------------------


def resolve_uri(uri: str | None) -> str:
    """`sqlite:///results/mlflow.db` → `sqlite:////abs/cwd/results/mlflow.db`; other URIs unchanged."""
    uri = (uri or DEFAULT_URI).strip()
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        return "sqlite:///" + str(Path.cwd() / path)
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest)


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def sanitize_metric_name(name: str) -> str:
    """A valid MLflow metric name: keeps '/', replaces other invalid characters with '_'."""
    name = _BAD_NAME_CHARS.sub("_", str(name))
    parts = [p if p not in (".", "..") else "_" for p in name.split("/") if p != ""]
    return ("/".join(parts) or "_")[:MAX_KEY_LEN]


def truncate(value: Any, limit: int) -> str:
    """str(value) cut to `limit` characters, marked as truncated (MLflow rejects longer values)."""
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the repository holding this package, '+dirty' when tracked files changed; 'unknown'."""
    where = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True, timeout=5
        )
        return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _prepare_env(uri: str) -> None:
    if is_http(uri):
        for key, value in HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)  # a user's own setting wins


def probe(uri: str) -> str | None:
    """Why `uri` cannot be used (None when it looks usable). Never takes longer than a few seconds."""
    if is_http(uri):
        import requests

        try:
            requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S)
        except requests.RequestException as err:
            return f"{type(err).__name__}: {_first_line(err)}"
        return None
    path = sqlite_path(uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return f"cannot create {path.parent}: {err.strerror}"
        if not os.access(path.parent, os.W_OK):
            return f"{path.parent} is not writable"
    return None


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:limit]


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first contact and run creation across processes sharing one SQLite file."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _client(uri: str):
    """An MlflowClient whose store exists (created under the lock: MLflow's own schema set-up races)."""
    from mlflow import MlflowClient

    _prepare_env(uri)
    with _store_lock(uri):  # the constructor builds the store, which creates the schema if missing
        db = sqlite_path(uri)
        if db is not None:
            follow_moved_store(db)
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    return client


# where each table of MLflow's SQLite schema keeps an artifact location
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"), ("logged_models", "artifact_location"),
                     ("model_versions", "source"), ("model_versions", "storage_location"))


def follow_moved_store(db: Path) -> int:
    """A SQLite store in a folder that moved (results copied to another disk, renamed) still names
    the old folder in every artifact location. drpo keeps artifacts beside the database
    (`<folder>/mlartifacts/<experiment>`), so each such location is pointed at this folder's
    `mlartifacts/`: images, tables and registered models open again. The number of rewrites."""
    import sqlite3

    if not db.exists():
        return 0
    here = (db.parent.resolve() / ARTIFACTS_DIR).as_uri() + "/"
    marker = f"/{ARTIFACTS_DIR}/"
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        try:
            locations = [row[0] for row in con.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.OperationalError:  # not an MLflow store yet
            return 0
        olds = {loc[: loc.index(marker) + len(marker)] for loc in locations
                if loc and loc.startswith("file://") and marker in loc and not loc.startswith(here)}
        for old in olds:
            for table, column in _LOCATION_COLUMNS:
                try:
                    cur = con.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
                                      (here, len(old) + 1, len(old), old))
                except sqlite3.OperationalError:  # a table this MLflow version does not have
                    continue
                changed += cur.rowcount
    return changed


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store go next to the database (MLflow's default is ./mlruns in the cwd)."""
    path = sqlite_path(uri)
    if path is None:
        return None  # a tracking server decides (proxied artifacts)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment).strip("_")[:60] or "experiment"
    digest = hashlib.sha256(experiment.encode()).hexdigest()[:8]
    return (path.parent.resolve() / ARTIFACTS_DIR / f"{slug}-{digest}").as_uri()


def _ensure_experiment(client, uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    last: Exception | None = None
    for attempt in range(6):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":  # the name stays taken; bring it back
                client.restore_experiment(exp.experiment_id)
            if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri, name),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException as err:  # another process created it first: read it again
            last = err
            time.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"could not create or read MLflow experiment {name!r}: {last}")


def ensure_experiment(uri: str, name: str) -> str:
    """Id of experiment `name`, created if missing; safe when several processes call it at once."""
    uri = resolve_uri(uri)
    client = _client(uri)
    with _store_lock(uri):
        return _ensure_experiment(client, uri, name)


# -- the tracker --------------------------------------------------------------------------------


class Tracker:
    """One MLflow run plus a local JSONL copy of its metrics. MLflow failures only disable MLflow."""

    def __init__(self, uri: str, *, metrics_path: str | Path | None = None, owns_run: bool = True):
        self.uri = uri
        self.metrics_path = Path(metrics_path) if metrics_path else None
        self.run_id: str | None = None
        self.owns_run = owns_run  # False: the run belongs to `drpo job`, which ends it
        self._client = None
        self._disabled = False
        self._warned = False
        self._closed = False
        self._system = None  # MLflow's SystemMetricsMonitor, while it samples

    @property
    def enabled(self) -> bool:
        """True while metrics still go to MLflow."""
        return self.run_id is not None and not self._disabled

    def _fail(self, err: BaseException | str) -> None:
        self._disabled = True
        if self._warned:
            return
        self._warned = True
        why = err if isinstance(err, str) else f"{type(err).__name__}: {_first_line(err)}"
        where = self.metrics_path if self.metrics_path else "the job log only (no local metrics file)"
        log.warning("MLflow at %s unreachable: %s; metrics continue in %s", self.uri, why, where)

    def _call(self, fn, *args, **kwargs) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking must never stop training
            self._fail(err)
            return None

    def _open(self, experiment: str, run_name: str | None, tags: Mapping[str, str], existing_run_id: str | None) -> None:
        """Create (or attach to) the run; any failure becomes the single warning."""
        _prepare_env(self.uri)
        why = probe(self.uri)
        if why:
            self._fail(why)
            return
        try:
            self._client = _client(self.uri)
            if existing_run_id:
                self._client.get_run(existing_run_id)  # exists in this store?
                self.run_id = existing_run_id
            else:
                all_tags = {"mlflow.user": _user(), "mlflow.source.name": _source(), **tags}
                with _store_lock(self.uri):
                    exp_id = _ensure_experiment(self._client, self.uri, experiment)
                    run = self._client.create_run(exp_id, run_name=run_name, tags=_clean_tags(all_tags))
                self.run_id = run.info.run_id
            if existing_run_id and tags:
                self.set_tags(tags)
        except Exception as err:  # noqa: BLE001
            self._fail(err)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append to the local JSONL, then send to MLflow. Non-numeric values are skipped."""
        clean: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                clean[str(key)] = float(value)
            except (TypeError, ValueError):
                continue
        if not clean:
            return
        now = time.time()
        if self.metrics_path is not None:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"step": step, "time": round(now, 3), **clean}) + "\n"
            with open(self.metrics_path, "a") as fh:  # one write per line: appends never interleave
                fh.write(line)
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(now * 1000)
        items = [Metric(sanitize_metric_name(k), v, ts, int(step or 0)) for k, v in clean.items()]
        for i in range(0, len(items), 1000):
            self._call(self._client.log_batch, self.run_id, metrics=items[i:i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values cut to 6000 chars); keys already on the run are left as they are."""
        if not self.enabled:
            return
        from mlflow.entities import Param

        run = self._call(self._client.get_run, self.run_id)
        if run is None:
            return
        have = set(run.data.params)
        items = [
            Param(sanitize_metric_name(k), truncate(v, MAX_PARAM_LEN))
            for k, v in params.items()
            if sanitize_metric_name(k) not in have
        ]
        for i in range(0, len(items), 100):
            self._call(self._client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.enabled or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _clean_tags(tags).items()]
        self._call(self._client.log_batch, self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or a folder's contents, under `artifact_path` of the run."""
        path = Path(path)
        if not self.enabled:
            return
        if not path.exists():
            log.warning("artifact %s does not exist; not logged to MLflow", path)
            return
        if path.is_dir():
            self._call(self._client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            self._call(self._client.log_artifact, self.run_id, str(path), artifact_path)

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """An image under `key` at `step` (MLflow's image slider in the run's Artifacts view)."""
        if not self.enabled:
            return
        from PIL import Image

        with Image.open(path) as image:
            self._call(self._client.log_image, self.run_id, image.convert("RGB"), key=key, step=int(step))

    def log_lora_model(self, final: str | Path, base_model: str, registered_name: str, resolution: int) -> str | None:
        """The final LoRA as an MLflow model of the `mlflow.diffusers` flavor (the adapter in diffusers'
        format plus the base model's id or absolute path), registered as `registered_name`, so
        `mlflow.pyfunc.load_model("models:/<name>/latest").predict({"prompt": [...]})` gives PNGs with
        the one-step defaults (1 step, no guidance). Returns the model URI (None when MLflow is off)."""
        if not self.enabled:
            return None
        return self._call(_log_lora_model, self.uri, self.run_id, Path(final), base_model, registered_name, resolution)

    def log_prompt_set(self, path: str | Path, rows: list[dict], context: str = "training") -> None:
        """A prompt set as an MLflow dataset input of the run (its rows, source file and digest)."""
        if not self.enabled:
            return
        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        frame = pd.DataFrame([{k: (v if isinstance(v, (str, int, float)) else json.dumps(v)) for k, v in r.items()} for r in rows])
        dataset = mlflow.data.from_pandas(frame, source=str(Path(path).resolve()), name=Path(path).stem)
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
        self._call(self._client.log_inputs, self.run_id, datasets=[entry])

    def start_system_metrics(self, interval: float) -> None:
        """Sample CPU, memory, disk and GPU use every `interval` seconds into the run (`system/*`)."""
        if not self.enabled or interval <= 0 or self._system is not None:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._system = self._call(SystemMetricsMonitor, self.run_id, sampling_interval=interval, tracking_uri=self.uri)
        if self._system is not None:
            self._system.start()

    def close(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED). Later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        if self._system is not None:
            self._call(self._system.finish)
            self._system = None
        if self.owns_run and self.enabled:
            self._call(self._client.set_terminated, self.run_id, status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")


def _log_lora_model(uri: str, run_id: str, final: Path, base_model: str, registered_name: str, resolution: int) -> str:
    import tempfile

    import mlflow
    import mlflow.diffusers
    from diffusers import StableDiffusionPipeline
    from mlflow.models import ModelSignature
    from mlflow.types import DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import ColSpec
    from safetensors.torch import load_file

    lora = final / "unet_lora"
    adapter = json.loads((lora / "adapter_config.json").read_text())
    # peft's keys (base_model.model.<module>) become diffusers' (unet.<module>); the LoRA config
    # (rank, alpha, targets) travels in the file's metadata, so load_lora_weights scales it right
    state = {k.removeprefix("base_model.model."): v for k, v in load_file(str(lora / "adapter_model.safetensors")).items()}
    metadata = {k: adapter[k] for k in ("r", "lora_alpha", "target_modules", "lora_dropout", "use_dora", "use_rslora") if k in adapter}
    local = Path(base_model)
    if local.exists():  # a folder: absolute, so MLflow does not take it for a Hub id
        base_model = str(local.resolve())
    signature = ModelSignature(
        inputs=Schema([ColSpec(type=DataType.string, name="prompt")]),
        outputs=Schema([ColSpec(type=DataType.binary, name="image")]),
        params=ParamSchema([
            ParamSpec(name="num_inference_steps", dtype=DataType.integer, default=1),  # one-step generators
            ParamSpec(name="guidance_scale", dtype=DataType.double, default=0.0),
            ParamSpec(name="height", dtype=DataType.integer, default=int(resolution)),
            ParamSpec(name="width", dtype=DataType.integer, default=int(resolution)),
        ]),
    )
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="drpo-lora-") as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=state, unet_lora_adapter_metadata=metadata)
        info = mlflow.diffusers.log_model(str(Path(tmp) / "pytorch_lora_weights.safetensors"), base_model=base_model,
                                          name="model", registered_model_name=registered_name, signature=signature,
                                          run_id=run_id, await_registration_for=0)
    return info.model_uri


def _clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    return {str(k)[:MAX_KEY_LEN]: truncate(v, MAX_TAG_LEN) for k, v in tags.items() if v is not None}


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


def _source() -> str:
    return truncate(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python", 500)


def open_run(
    uri: str | None,
    experiment: str,
    *,
    run_name: str | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    metrics_path: str | Path | None = None,
    existing_run_id: str | None = None,
) -> Tracker:
    """A Tracker on a new run of `experiment` (or on `existing_run_id`, which it will not end)."""
    tracker = Tracker(resolve_uri(uri), metrics_path=metrics_path, owns_run=existing_run_id is None)
    tags = dict(tags or {})
    if parent_run_id and not existing_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tracker._open(experiment, run_name, tags, existing_run_id)
    if params:
        tracker.log_params(params)
    return tracker


# -- training ----------------------------------------------------------------------------------


def training_tracker(cfg) -> Tracker:
    """The tracker of one training job (a TrainConfig): config as params, method/model/... as tags.

    In multi-process training only rank 0 tracks; other ranks get a tracker that does nothing. With
    `tracking.enabled: false` MLflow stays off and the metrics only go to `<output_dir>/metrics.jsonl`.
    """
    from drpo.config import config_hash, flatten, to_dict
    from drpo.train.config import own_params

    out = Path(cfg.output_dir)
    rank0 = int(os.environ.get("RANK", "0") or 0) == 0
    if not rank0 or not cfg.tracking.enabled:
        tracker = Tracker(resolve_uri(cfg.tracking.uri), metrics_path=out / "metrics.jsonl" if rank0 else None)
        tracker._disabled = True
        return tracker
    run_id = os.environ.get(RUN_ENV) or None
    parent = os.environ.get(PARENT_ENV) or None
    uri = os.environ.get(URI_ENV) if (run_id or parent) and os.environ.get(URI_ENV) else cfg.tracking.uri
    tags = {
        "drpo.kind": "train",
        "method": cfg.method,
        "model": cfg.model.path,
        "reward": ",".join(r.name for r in cfg.reward),
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
        "config_hash": config_hash(cfg),
        "output_dir": str(out.resolve()),
        "host": socket.gethostname(),
        **{str(k): str(v) for k, v in cfg.tracking.tags.items()},
    }
    tracker = open_run(
        uri,
        cfg.tracking.experiment,
        run_name=cfg.tracking.run_name or out.name,
        tags=tags,
        params=flatten(own_params(to_dict(cfg))),  # not the other methods' defaults
        parent_run_id=parent,
        metrics_path=out / "metrics.jsonl",
        existing_run_id=run_id,
    )
    if run_id:  # `drpo job` named its run after the rule ("train[run=drpo-s42]"): the Compare view shows the run's own name
        tracker.set_tags({"mlflow.runName": cfg.tracking.run_name or out.name})
    tracker.start_system_metrics(cfg.tracking.system_metrics)
    return tracker


# -- workflow runs -------------------------------------------------------------------------------


def start_workflow_run(uri: str | None, experiment: str, config_hash: str, run_name: str | None = None,
                       tags: Mapping[str, Any] | None = None) -> str | None:
    """Create the parent run of one workflow invocation; its id (None when MLflow is unusable).

    The run stays RUNNING until `end_workflow_run`.
    """
    all_tags = {"drpo.kind": "workflow", "config_hash": config_hash, "git_commit": git_commit(),
                "host": socket.gethostname(), **(tags or {})}
    tracker = open_run(uri, experiment, run_name=run_name or f"workflow-{config_hash}", tags=all_tags)
    if tracker.run_id is None or not tracker.enabled:
        return None
    _WORKFLOW_URIS[tracker.run_id] = tracker.uri
    return tracker.run_id


def end_workflow_run(run_id: str | None, status: str = "FINISHED", uri: str | None = None) -> None:
    """End the parent run; never raises (it runs in the workflow's onsuccess/onerror)."""
    if not run_id:
        return
    uri = resolve_uri(uri or _WORKFLOW_URIS.get(run_id) or os.environ.get(URI_ENV) or DEFAULT_URI)
    tracker = open_run(uri, "", existing_run_id=run_id)
    if tracker.enabled:
        tracker._call(tracker._client.set_terminated, run_id, status)


@contextlib.contextmanager
def job_run(
    uri: str | None,
    experiment: str,
    parent_run_id: str | None,
    rule: str,
    wildcards: Mapping[str, Any],
    config_hash: str,
    params: Mapping[str, Any] | None = None,
    *,
    tags: Mapping[str, Any] | None = None,
    metrics_path: str | Path | None = None,
) -> Iterator[Tracker]:
    """A child run for one workflow job; ended FINISHED, or FAILED when the block raises."""
    wildcards = {str(k): str(v) for k, v in wildcards.items()}
    all_tags = {
        "drpo.kind": "job",
        "rule": rule,
        "wildcards": json.dumps(wildcards, sort_keys=True),
        **{f"wildcard.{k}": v for k, v in wildcards.items()},
        "config_hash": config_hash,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        **(tags or {}),
    }
    name = rule + ("[" + ",".join(f"{k}={v}" for k, v in wildcards.items()) + "]" if wildcards else "")
    tracker = open_run(uri, experiment, run_name=name, tags=all_tags, params=params,
                       parent_run_id=parent_run_id, metrics_path=metrics_path)
    with tracker:
        yield tracker
