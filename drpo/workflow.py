"""What the Snakefile needs to know about a config: validation, the runs, and where outputs go.

The Snakefile stays thin: it asks this module which training runs, sample sets, scores and
judgements a config implies, and for each job's command-line arguments. Everything here is plain
Python over the config dict, so it is tested without Snakemake.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drpo.config import ConfigError, config_hash, deep_merge, load_yaml, merge_overrides
from drpo.contracts import Layout
from drpo.train.registry import method_spec

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _path_of(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def _set_defaults(schema: dict, data: Any) -> None:
    """Fill `default` values of object properties (jsonschema validates but never fills)."""
    if not isinstance(data, dict) or schema.get("type") != "object":
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if key in data:
            _set_defaults(sub, data[key])


def _method_choices(schema: dict) -> None:
    """A run's `method` is one of the registry's (drpo.train.registry), wherever the schema takes one."""
    from drpo.train.registry import NAMES

    if isinstance(schema, dict):
        if schema.get("x-choices") == "training-methods":
            schema["enum"] = list(NAMES)
        for value in schema.values():
            _method_choices(value)
    elif isinstance(schema, list):
        for value in schema:
            _method_choices(value)


def validate_config(config: dict, source: str = "config", schema_path: Path = SCHEMA) -> dict:
    """Validate against workflow/schemas/config.schema.yaml; errors name the key path.

    Returns the config with schema defaults filled in, plus cross-reference checks the schema
    cannot express (a run naming an unknown model, a local model path that does not exist).
    """
    import jsonschema

    schema = yaml.safe_load(schema_path.read_text())
    _method_choices(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            unknown = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            where = _path_of(err)
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            raise ConfigError(f"{source}: unknown key {where + '.' if where != '<top level>' else ''}{unknown[0]} (allowed: {allowed})")
        raise ConfigError(f"{source}: {_path_of(err)}: {err.message}")
    config = copy.deepcopy(config)
    _set_defaults(schema, config)
    config = resolve_results(config, source)
    _check_references(config, source)
    _check_tables(config, source)
    for run_id in runs(config):  # every run's TrainConfig, at every parse: also when its outputs exist
        try:
            train_config(config, run_id)
        except (ConfigError, ValueError, TypeError, KeyError) as err:
            message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            raise ConfigError(f"{source}: {message}" if not message.startswith(source) else message) from None
    return config


def _check_references(config: dict, source: str) -> None:
    models, rewards = config.get("models", {}), config.get("rewards", {})
    prompt_sets, datasets = config.get("prompt_sets", {}), config.get("datasets", {})
    results = config.get("results", "results")
    for name, model in models.items():
        path = model["path"]
        # Outputs of the workflow (the world's base model) and hub ids are resolved when jobs run.
        local = path.startswith(("/", "./", "../", "~")) or path.count("/") != 1
        if local and not path.startswith(results) and not Path(path).expanduser().exists():
            raise ConfigError(
                f"{source}: models.{name}.path: {path} does not exist. Point it at a local diffusers "
                f"folder or use a Hugging Face id that is in the offline cache."
            )
    _check_launcher(launcher(config), "training.launcher", source)
    for name, run in config["training"]["runs"].items():
        if not RUN_NAME.match(name) or "__" in name:
            raise ConfigError(f"{source}: training.runs.{name}: run names use letters, digits, '-', '_', '.' (no '__')")
        if run["model"] not in models:
            raise ConfigError(f"{source}: training.runs.{name}.model: '{run['model']}' is not in models ({', '.join(models)})")
        needs = method_spec(run["method"])
        if not needs.dataset:
            if "reward" not in run:
                raise ConfigError(f"{source}: training.runs.{name}.reward: method {run['method']} needs a reward")
            if "prompts" not in run:
                raise ConfigError(f"{source}: training.runs.{name}.prompts: method {run['method']} needs training prompts")
        if "reward" in run and run["reward"] not in rewards:
            raise ConfigError(f"{source}: training.runs.{name}.reward: '{run['reward']}' is not in rewards ({', '.join(rewards)})")
        if "prompts" in run and run["prompts"] not in prompt_sets:
            raise ConfigError(f"{source}: training.runs.{name}.prompts: '{run['prompts']}' is not in prompt_sets")
        if needs.dataset and run.get("dataset") not in datasets and run.get("dataset") != "world_pairs":
            raise ConfigError(f"{source}: training.runs.{name}.dataset: '{run.get('dataset')}' is not in datasets")
        where = f"training.runs.{name}.launcher" if "launcher" in run else "training.launcher"
        _check_launcher({**launcher(config), **run.get("launcher", {})}, where, source)
    for name, grid in config["training"].get("ablations", {}).items():
        if grid["run"] not in config["training"]["runs"]:
            raise ConfigError(f"{source}: training.ablations.{name}.run: '{grid['run']}' is not a run")
        try:
            ablation_points(name, grid)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
    evaluation = config["evaluation"]
    for ts in evaluation["test_sets"]:
        if ts not in prompt_sets:
            raise ConfigError(f"{source}: evaluation.test_sets: '{ts}' is not in prompt_sets")
    for where, names in (("prompt_sets", prompt_sets), ("evaluation.base_models", evaluation.get("base_models", {})),
                         ("models", models)):
        bad = [n for n in names if not RUN_NAME.match(n) or "__" in n]
        if bad:
            raise ConfigError(f"{source}: {where}.{bad[0]}: names use letters, digits, '-', '_', '.' (no '__')")
    for name, base in evaluation.get("base_models", {}).items():
        if base["model"] not in models:
            raise ConfigError(f"{source}: evaluation.base_models.{name}.model: '{base['model']}' is not in models")
    for name, metric in evaluation.get("metrics", {}).items():
        unknown = [ts for ts in metric.get("test_sets") or [] if ts not in evaluation["test_sets"]]
        if unknown:
            raise ConfigError(f"{source}: evaluation.metrics.{name}.test_sets: '{unknown[0]}' is not in evaluation.test_sets "
                              f"({', '.join(evaluation['test_sets'])})")
    judge = evaluation.get("judge") or {}
    named = set(evaluation.get("base_models", {})) | set(_named_runs(config))
    for who in [judge.get("method", "drpo")] * bool(judge) + list(judge.get("against", [])):
        if who not in named:
            key = "method" if who == judge.get("method", "drpo") and who not in judge.get("against", []) else "against"
            raise ConfigError(f"{source}: evaluation.judge.{key}: '{who}' is neither a base model nor a run "
                              f"({', '.join(sorted(named))})")
    for name in COMPARISONS:
        spec = evaluation.get(name)
        if not spec:
            continue
        if name in evaluation.get("metrics", {}):
            raise ConfigError(f"{source}: evaluation.metrics.{name}: the name is taken by evaluation.{name}; rename the metric")
        reference = spec["reference"]
        if reference not in evaluation.get("base_models", {}) and reference not in config["training"]["runs"]:
            raise ConfigError(f"{source}: evaluation.{name}.reference: '{reference}' is neither a base model nor a run")
        extractor, options = _extractor(spec)
        if extractor != "random_conv" and not options.get("path"):
            where = "inception (clean-fid's inception-2015-12-05.pt)" if extractor == "inception" else "options.path"
            raise ConfigError(f"{source}: evaluation.{name}: the {extractor} extractor needs its weights; set evaluation.{name}.{where}")
    if "world" in [p["source"] for p in prompt_sets.values()] and "world" not in config:
        raise ConfigError(f"{source}: prompt_sets use source 'world' but the config has no world: block")


def load_config(path: str | Path) -> dict:
    """A workflow config file, validated against the schema (defaults filled in, `{results}` resolved)."""
    return validate_config(load_yaml(path), source=str(path))


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "config.yaml"


def snakemake_config(config: dict, default: str | Path = DEFAULT_CONFIG) -> dict:
    """The validated config of a Snakemake invocation. Without a `configfile:` directive Snakemake's
    `config` holds only the --configfile files and the --config values. When it holds every one of
    the schema's required top-level keys (a whole study), it is the config; otherwise (no file, or
    files and values that change some keys) they go on top of the embedded default."""
    required = yaml.safe_load(SCHEMA.read_text())["required"]
    config = copy.deepcopy(dict(config))
    if all(key in config for key in required):
        return validate_config(config, source="--configfile")
    return validate_config(deep_merge(load_yaml(default), config), source=str(default))


PLACEHOLDER = re.compile(r"\{[^{}]*\}")


def resolve_results(config: dict, source: str = "config") -> dict:
    """Every `{results}` in a string value replaced by the config's `results` folder, so the world's
    models, reward model and SQLite store move with `--config results=DIR`; a literal path stays as
    written. Any other `{...}` is an error naming the key."""
    results = config.get("results", "results")

    def resolve(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            unknown = [m for m in PLACEHOLDER.findall(value) if m != "{results}" or where == "results"]
            if unknown:
                raise ConfigError(f"{source}: {where}: unknown placeholder {unknown[0]} in {value!r} "
                                  f"(only {{results}} is substituted, and not in results itself)")
            return value.replace("{results}", results)
        return value

    return resolve(config, "")


# -- runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training job: a run of the config at one seed (ablation points are runs too)."""

    id: str  # e.g. "drpo-s42", "drpo-kernel-rbf-s42"
    name: str  # the config's run name (or "<run>-<grid>-<value>")
    seed: int
    spec: dict  # method, model, reward, prompts, dataset, label, launcher, set
    overrides: dict  # TrainConfig overrides beyond the defaults


def _dotted(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _slug(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:  # a component block, e.g. {name: dinov2, options: ...}
        value = value["name"]
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(value)).strip("-")


def ablation_points(grid_name: str, grid: dict) -> list[str]:
    """Run names of a grid's points, `<run>-<grid>-<value>`: the value's slug (a component block's
    name), or, where two values share a slug (two clip blocks with other keys), the labels' slugs."""
    slugs = [_slug(v) for v in grid["values"]]
    if len(set(slugs)) < len(slugs):
        labels = [_slug(label) for label in grid.get("labels") or []]
        if len(labels) != len(slugs) or len(set(labels)) < len(labels):
            raise ConfigError(f"training.ablations.{grid_name}: values {slugs} would name the same run twice; "
                              "give the grid distinct `labels` (one per value): they then name its runs")
        slugs = labels
    return [f"{grid['run']}-{grid_name}-{slug}" for slug in slugs]


def _named_runs(config: dict) -> dict[str, tuple[dict, dict]]:
    """Run name -> (spec, TrainConfig overrides): the config's runs and every ablation point. A point
    copies its parent run's spec, so it trains with the parent's model, reward and launcher."""
    training = config["training"]
    named: dict[str, tuple[dict, dict]] = {}
    for name, spec in training["runs"].items():
        named[name] = (spec, spec.get("set", {}))
    for grid, ab in training.get("ablations", {}).items():
        spec = training["runs"][ab["run"]]
        for i, (value, name) in enumerate(zip(ab["values"], ablation_points(grid, ab))):
            label = ab.get("labels", [None] * len(ab["values"]))[i] or f"{grid}={value}"
            named[name] = (
                {**spec, "label": label, "ablation": grid, "value": value},
                merge_overrides(spec.get("set", {}), _dotted(ab["key"], value)),
            )
    return named


def runs(config: dict) -> dict[str, Run]:
    """Every training job the config implies, by id."""
    training = config["training"]
    out = {}
    for name, (spec, overrides) in _named_runs(config).items():
        for seed in training["seeds"]:
            rid = f"{name}-s{seed}"
            out[rid] = Run(rid, name, seed, spec, overrides)
    return out


def eval_models(config: dict) -> dict[str, dict]:
    """Everything that gets sampled: base models and trained runs, by name (runs by run id)."""
    out = {}
    for name, base in config["evaluation"].get("base_models", {}).items():
        out[name] = {"kind": "base", "model": base["model"], "label": base.get("label", name)}
    for rid, run in runs(config).items():
        out[rid] = {"kind": "run", "model": run.spec["model"], "label": run.spec.get("label", run.name), "run": run.name,
                    "seed": run.seed}
    return out


def train_config(config: dict, run_id: str) -> dict:
    """The TrainConfig dict of one run (what `drpo train --config` reads), checked by TrainConfig."""
    from drpo.config import to_dict
    from drpo.train.config import train_config_from_dict

    run = runs(config)[run_id]
    results = config.get("results", "results")
    spec = run.spec
    model = config["models"][spec["model"]]
    data: dict = copy.deepcopy(config["training"].get("defaults", {}))
    base = {
        "method": spec["method"],
        "seed": run.seed,
        "output_dir": Layout(results).run(run_id),
        "model": {k: v for k, v in model.items() if k in ("path", "family", "dtype", "resolution")},
        "tracking": {"uri": config["tracking"]["uri"], "experiment": config["experiment"], "run_name": run_id,
                     "tags": {"run": run.name, "label": spec.get("label", run.name)}},
    }
    data = deep_merge(data, base)
    if "reward" in spec:
        data["reward"] = config["rewards"][spec["reward"]]
    if "prompts" in spec:
        data = deep_merge(data, {"prompts": {"path": prompt_path(config, spec["prompts"])}})
    if method_spec(spec["method"]).dataset:
        data = deep_merge(data, {"offline": {"dataset": dataset_path(config, spec["dataset"])}})
    data = merge_overrides(data, run.overrides)
    cfg = train_config_from_dict(data, source=f"training.runs.{run.name}")
    return to_dict(cfg)


def write_train_config(config: dict, run_id: str, out: str | Path) -> None:
    from drpo.io import write_text

    write_text(out, yaml.safe_dump(train_config(config, run_id), sort_keys=False))


# -- paths ------------------------------------------------------------------------------------


def results_dir(config: dict) -> str:
    return config.get("results", "results")


def layout(config: dict) -> Layout:
    """Every path under the config's results folder (drpo.contracts.Layout)."""
    return Layout(results_dir(config))


def prompt_path(config: dict, name: str) -> str:
    return layout(config).prompts(name)


def dataset_path(config: dict, name: str) -> str:
    if name == "world_pairs":
        return layout(config).world_pairs()
    spec = config.get("datasets", {}).get(name, {})
    return spec.get("path") or layout(config).dataset_pairs(name)


def model_marker(config: dict, model_name: str) -> str | None:
    """The file whose existence means a workflow-built model is ready (None: model is external)."""
    path = config["models"][model_name]["path"]
    if path.startswith(results_dir(config)):
        return f"{path}/model_index.json"
    return None


# evaluation blocks that score a model against a reference model's samples
COMPARISONS = ("fid", "distance")


def _extractor(spec: dict) -> tuple[str, dict]:
    """A comparison's feature extractor and its options (`fid.inception` is the Inception path)."""
    extractor = spec.get("extractor", "inception")
    options = dict(spec.get("options") or {})
    if extractor == "inception" and spec.get("inception"):
        options.setdefault("path", spec["inception"])
    return extractor, options


def comparisons(config: dict) -> dict[str, dict]:
    """The configured reference comparisons (`evaluation.fid`, `evaluation.distance`) by metric name:
    the reference model, the feature extractor and its options."""
    out = {}
    for name in COMPARISONS:
        spec = config["evaluation"].get(name)
        if not spec:
            continue
        extractor, options = _extractor(spec)
        out[name] = {"reference": spec["reference"], "extractor": extractor, "options": options}
    return out


def reference_model(config: dict, name: str, model: str) -> str | None:
    """The model id whose samples `model` is compared with for comparison `name`; None for the
    reference itself. A reference run is matched seed by seed (drpo-s43 against base-run-s43); a base
    model is compared with the reference run's first training seed."""
    return _reference_of(config["evaluation"][name]["reference"], model, eval_models(config), config["training"]["seeds"])


def _reference_of(reference: str, model: str, models: dict[str, dict], seeds: list[int]) -> str | None:
    ref = reference if reference in models else f"{reference}-s{models[model].get('seed', seeds[0])}"
    return None if ref == model else ref


def metric_test_sets(config: dict, metric: str) -> list[str]:
    """The test sets a metric scores: its own `test_sets`, else every test set of the evaluation."""
    return list(config["evaluation"]["metrics"][metric].get("test_sets") or config["evaluation"]["test_sets"])


def score_plan(config: dict, model: str) -> list[dict]:
    """Everything one model's `score` job computes (`drpo score --plan`): each metric on each of its
    test sets, and each reference comparison (FID, distance) the model is not the reference of."""
    models, seeds, lay = eval_models(config), config["training"]["seeds"], layout(config)
    tasks = []
    for metric, spec in config["evaluation"]["metrics"].items():
        for ts in metric_test_sets(config, metric):
            tasks.append({"metric": metric, "test_set": ts, "manifest": lay.manifest(ts, model),
                          "reward": {"name": spec["name"], "options": spec.get("options", {})},
                          "scores": lay.score_values(ts, model, metric), "summary": lay.score_summary(ts, model, metric)})
    for name, spec in comparisons(config).items():
        reference = _reference_of(spec["reference"], model, models, seeds)
        if reference is None:
            continue
        for ts in config["evaluation"]["test_sets"]:
            tasks.append({"metric": name, "test_set": ts, "manifest": lay.manifest(ts, model),
                          "comparison": name, "reference": lay.manifest(ts, reference),
                          "extractor": spec["extractor"], "extractor_options": spec["options"],
                          "summary": lay.score_summary(ts, model, name)})
    return tasks


def write_score_plan(config: dict, model: str, out: str | Path) -> Path:
    from drpo.io import write_json

    return write_json(out, {"model": model, "tasks": score_plan(config, model)})


def config_digest(config: dict) -> str:
    return config_hash(config)


def judged_model_pairs(config: dict) -> list[tuple[str, str]]:
    """(method, other) model names compared by the judge: DrPO vs each of `against`, per seed."""
    judge = config["evaluation"].get("judge")
    if not judge:
        return []
    models = eval_models(config)
    method = judge.get("method", "drpo")
    seeds = config["training"]["seeds"]
    pairs = []
    for seed in seeds:
        a = f"{method}-s{seed}"
        for other in judge.get("against", []):
            b = other if other in models else f"{other}-s{seed}"
            if a in models and b in models:
                pairs.append((a, b))
    return pairs


def to_json(obj: Any) -> str:
    """A value as compact JSON (a rule's params: a change re-runs the rule)."""
    return json.dumps(obj, sort_keys=True)


LAUNCHER = {"num_processes": 1, "gpus": 0}


def _run_spec(config: dict, run: str) -> tuple[str, dict]:
    """(run name, spec) of a run id ("grpo-s42") or a run name ("grpo", "drpo-K-16")."""
    by_id = runs(config)
    if run in by_id:
        return by_id[run].name, by_id[run].spec
    named = _named_runs(config)
    if run in named:
        return run, named[run][0]
    raise ConfigError(f"'{run}' is neither a run id nor a run name of training.runs / training.ablations")


def launcher(config: dict, run: str | None = None) -> dict:
    """{num_processes, gpus} of one training job: each key from the run's own `launcher` (an
    ablation point's parent run), else `training.launcher`, else 1 process and no GPU. Without
    `run`, the config-level launcher."""
    out = {**LAUNCHER, **config["training"].get("launcher", {})}
    if run is not None:
        out.update(_run_spec(config, run)[1].get("launcher", {}))
    return out


def uses_gpu(config: dict, run: str | None = None) -> bool:
    return launcher(config, run)["gpus"] > 0


def launch_command(config: dict, run: str | None = None) -> str:
    """`drpo` for one process; accelerate for several (multi-GPU training inside one job)."""
    n = launcher(config, run)["num_processes"]
    return "drpo" if n == 1 else f"accelerate launch --num_processes {n} -m drpo.cli"


def prompts_per_update(config: dict, run: str) -> int:
    """Prompts behind one optimizer update of a run: processes x grad_accum x prompts per micro-step
    (a run name is read at the first training seed; seeds do not change it)."""
    name, _ = _run_spec(config, run)
    run_id = run if run in runs(config) else f"{name}-s{config['training']['seeds'][0]}"
    cfg = train_config(config, run_id)
    return launcher(config, run_id)["num_processes"] * cfg["grad_accum"] * cfg["prompts_per_micro_step"]


def _check_launcher(launch: dict, where: str, source: str) -> None:
    """Each accelerate process trains on a GPU of its own: more processes than GPUs is a typo."""
    if launch["gpus"] > 0 and launch["num_processes"] > launch["gpus"]:
        raise ConfigError(
            f"{source}: {where}.num_processes: {launch['num_processes']} processes on {launch['gpus']} GPUs; "
            f"each accelerate process needs a GPU of its own (set {where}.gpus: {launch['num_processes']}, "
            f"or gpus: 0 for CPU processes)"
        )


# -- each job's arguments, as argv lists: the rules quote every element (`{params.args:q}`), so no
# value from a config (a path with a space, a `$(...)`) is ever read by a shell


def prompt_set_argv(config: dict, name: str) -> list[str]:
    """`drpo` arguments that prepare prompt set `name` (before `--out`)."""
    spec = config["prompt_sets"][name]
    local = ["--local-dir", spec["local_dir"]] if spec.get("local_dir") else []
    excludes = [prompt_path(config, other) for other in spec.get("exclude", [])]
    exclude = ["--exclude", *excludes] if excludes else []
    if spec["source"] == "world":
        w = config["world"]
        split = str(spec.get("split", "test"))
        # validation is drawn before training: every split depends on all three sizes
        return ["world", "prompts", "--split", split, "--n-train", str(w["train_prompts"]),
                "--n-test", str(w["test_prompts"]), "--n-val", str(w.get("val_prompts", 0)), "--seed", str(w["seed"])]
    if spec["source"] == "geneval_grammar":
        return ["prompts", "geneval-grammar", "--n", str(spec.get("n", 2000)), "--seed", str(spec.get("seed", 1)), *local, *exclude]
    if spec["source"] == "file":
        return ["prompts", "prepare", "file", "--path", spec["path"], *exclude]
    return ["prompts", "prepare", spec["source"], *local, *exclude]


def built_input(config: dict, path: str) -> str | None:
    """The file that says `path` is built, when this workflow builds it (a path under the results
    folder): the twins' manifest for a tiny twin, else the folder's config.json (the world's reward
    model and CLIP). None for a path outside the results folder (a model the user fetched)."""
    results = results_dir(config).rstrip("/") + "/"
    if not isinstance(path, str) or not path.startswith(results):
        return None
    twins = layout(config).twins().rstrip("/") + "/"
    if path.startswith(twins):
        from drpo.models.twins import MANIFEST

        return twins + MANIFEST
    return f"{path.rstrip('/')}/config.json"


def reward_inputs(config: dict, specs: list[dict]) -> list[str]:
    """What a reward (a list of reward specs) needs the workflow to build first: every option that
    names a path under the results folder (`path`, `processor`, a twin's `twin`)."""
    out = [built_input(config, v) for spec in specs for v in (spec.get("options") or {}).values()]
    return list(dict.fromkeys(f for f in out if f))


def model_inputs(config: dict, model_name: str) -> list[str]:
    """The workflow-built files a generator needs (nothing for a model the user fetched)."""
    marker = model_marker(config, model_name)
    return [marker] if marker else []


def prompt_set_inputs(config: dict, name: str) -> list[str]:
    """The prompt sets a prompt set must stay disjoint from (its `exclude:`)."""
    return [prompt_path(config, other) for other in config["prompt_sets"][name].get("exclude", [])]


def run_inputs(config: dict, run_id: str) -> dict[str, Any]:
    """What one training run reads: its train config, and the model, prompts, reward, dataset and
    feature map the workflow builds."""
    spec = runs(config)[run_id].spec
    out: dict[str, Any] = {"cfg": layout(config).train_config(run_id), "model": model_inputs(config, spec["model"])}
    if "prompts" in spec:
        out["prompts"] = prompt_path(config, spec["prompts"])
    if "reward" in spec:
        out["reward"] = reward_inputs(config, config["rewards"][spec["reward"]])
    if method_spec(spec["method"]).dataset:
        out["dataset"] = dataset_path(config, spec["dataset"])
    features = train_config(config, run_id).get("features", {}).get("options", {}).get("path", "")
    if built_input(config, features):  # a feature map the workflow builds (the world's CLIP, a twin)
        out["features"] = built_input(config, features)
    return out


def timed_inputs(config: dict) -> list[str]:
    """What the timing job needs besides its two configs: the timed runs' models, prompts, rewards."""
    timed = set(timing_runs(config).values())
    files = []
    for rid, run in runs(config).items():
        if run.name in timed:
            for key, value in run_inputs(config, rid).items():
                if key != "cfg":
                    files += value if isinstance(value, list) else [value]
    return files


def sample_inputs(config: dict, model: str) -> dict[str, Any]:
    """One model's sampling job: every test set's prompts, the generator, and a run's final LoRA."""
    m = eval_models(config)[model]
    out: dict[str, Any] = {"prompts": [prompt_path(config, ts) for ts in config["evaluation"]["test_sets"]],
                           "model": model_inputs(config, m["model"])}
    if m["kind"] == "run":
        out["lora"] = layout(config).final_state(model)
    return out


def score_inputs(config: dict, model: str) -> dict[str, Any]:
    """One model's scoring job: its plan, its and its references' manifests, and the reward and
    extractor models the workflow builds."""
    tasks = score_plan(config, model)
    specs = [t["reward"] for t in tasks if "reward" in t] + [{"options": t["extractor_options"]} for t in tasks if "comparison" in t]
    manifests = sorted({t[k] for t in tasks for k in ("manifest", "reference") if k in t})
    return {"plan": layout(config).score_plan(model), "manifests": manifests,
            "models": reward_inputs(config, specs)}


def table_figures(config: dict) -> dict[str, str]:
    """Figure name -> the PNG `drpo tables` draws for this config (what `drpo.eval.tables.build_all`
    writes): a chart per preference table, a breakdown per timing table, the training curves."""
    lay = layout(config)
    figures = {}
    for name, spec in config.get("tables", {}).items():
        if spec["builder"] == "preference":
            figures[f"{name}_chart"] = lay.table(name, "png")
        elif spec["builder"] == "timing":
            figures[f"{name}_breakdown_chart"] = lay.table(f"{name}_breakdown", "png")
    if any("reward" in run.spec for run in runs(config).values()):
        figures["training_curves"] = lay.table("training_curves", "png")
    return figures


def sample_grids(config: dict) -> dict[tuple[str, str], str]:
    """(test set, model) -> the sample grid PNG `drpo report --grids` writes."""
    return {(ts, model): layout(config).grid(ts, model)
            for ts in config["evaluation"]["test_sets"] for model in eval_models(config)}


def dataset_inputs(config: dict, name: str) -> list[str]:
    """What `drpo prompts pickapic-pairs` of dataset `name` reads that the workflow writes: the prompt
    sets it excludes, and its parquet files when the workflow builds them (the twins' shard).
    Parquet files the user fetched are not inputs, so a dry run needs no data."""
    spec = config["datasets"][name]
    parquet = [p for p in spec.get("parquet", []) if built_input(config, p)]
    return [prompt_path(config, other) for other in spec.get("exclude", [])] + parquet


def dataset_argv(config: dict, name: str) -> list[str]:
    """`drpo prompts pickapic-pairs` arguments of dataset `name` (before `--out`)."""
    spec = config["datasets"][name]
    if spec.get("source") != "pickapic_v2" or not spec.get("parquet"):
        raise ConfigError(f"datasets.{name}: only source pickapic_v2 with parquet files is built by the workflow")
    args = ["--parquet", *spec["parquet"]]
    if spec.get("max_pairs"):
        args += ["--max-pairs", str(spec["max_pairs"])]
    excludes = [prompt_path(config, other) for other in spec.get("exclude", [])]
    if excludes:
        args += ["--exclude-prompts", *excludes]
    return args


def sample_argv(config: dict, model: str) -> list[str]:
    """`drpo sample` arguments of one evaluated model: its generator, LoRA, and a reference row's sampler."""
    m = eval_models(config)[model]
    spec = config["models"][m["model"]]
    args = ["--model", spec["path"]]
    if spec.get("kind") == "multi_step":  # a reference row: its own pipeline, steps and guidance
        args += ["--multi-step", "--steps", str(spec.get("steps", 50)), "--guidance", str(spec.get("guidance_scale", 7.5))]
    if m["kind"] == "run":
        args += ["--lora", layout(config).final(model)]
    return args


def judge_argv(config: dict) -> list[str]:
    judge = config["evaluation"]["judge"]
    args = ["--backend", judge.get("backend", "world"), "--order", judge.get("order", "hashed")]
    if judge.get("model"):
        args += ["--model", judge["model"]]
    if judge.get("base_url"):
        args += ["--base-url", judge["base_url"]]
    if judge.get("max_pairs"):
        args += ["--max-pairs", str(judge["max_pairs"])]
    return args


def table_rows(config: dict, table: str) -> list[str]:
    """Row names of a config table: its `rows`, or an ablation grid's base run and its points; by
    default every base model and run (a preference table: the judge's opponents)."""
    spec = config.get("tables", {})[table]
    if spec.get("rows"):
        return list(spec["rows"])
    grid_name = spec.get("ablation")
    if grid_name:
        grid = config["training"]["ablations"][grid_name]
        return [grid["run"]] + ablation_points(grid_name, grid)
    if spec["builder"] == "preference":
        return list((config["evaluation"].get("judge") or {}).get("against", []))
    return list(config["evaluation"].get("base_models", {})) + list(config["training"]["runs"])


def _check_tables(config: dict, source: str) -> None:
    """A table's paper table is one its builder draws, and never one of a shapes-world config (the
    world's models are not the paper's); its rows are models of the config; a preference table's
    rows are models the judge compares DrPO with."""
    from drpo.eval.paper import TABLES

    names = set(config["evaluation"].get("base_models", {})) | set(_named_runs(config))
    for name, spec in config.get("tables", {}).items():
        where = f"{source}: tables.{name}"
        paper = spec.get("paper")
        if paper is not None and TABLES[paper] != spec["builder"]:
            raise ConfigError(f"{where}.paper: the paper's {paper} is drawn by builder {TABLES[paper]}, not {spec['builder']}")
        if paper is not None and "world" in config:
            raise ConfigError(f"{where}.paper: a shapes-world config's tables are compared with none of the paper's "
                              f"(its models are not the paper's); remove paper: {paper}")
        grid = spec.get("ablation")
        if grid is not None and grid not in config["training"].get("ablations", {}):
            raise ConfigError(f"{where}.ablation: '{grid}' is not in training.ablations")
        rows = table_rows(config, name)
        unknown = [r for r in rows if r not in names]
        if unknown:
            raise ConfigError(f"{where}.rows: '{unknown[0]}' is neither a base model nor a run of the config")
        if spec["builder"] == "preference":
            judge = config["evaluation"].get("judge")
            if not judge:
                raise ConfigError(f"{where}: builder preference needs evaluation.judge (its rows are the judge's opponents)")
            against = judge.get("against", [])
            missing = [r for r in rows if r not in against]
            if missing:
                raise ConfigError(f"{where}.rows: '{missing[0]}' is not judged against {judge.get('method', 'drpo')} "
                                  f"(evaluation.judge.against: {', '.join(against) or 'none'})")
        if spec["builder"] == "timing":
            timed = timing_runs(config)
            if not timed:
                raise ConfigError(f"{where}: builder timing needs evaluation.timing (the timed DrPO and DRaFT runs)")
            missing = [r for r in rows if r not in timed.values()]
            if missing:
                raise ConfigError(f"{where}.rows: '{missing[0]}' is not a timed run (evaluation.timing.runs: {timed})")
    timing = config.get("evaluation", {}).get("timing")
    if timing:
        reward = timing.get("reward")
        if reward not in config.get("rewards", {}):
            raise ConfigError(f"{source}: evaluation.timing.reward: '{reward}' is not in rewards ({', '.join(config.get('rewards', {}))})")
        specs = config["rewards"][reward]
        from drpo.rewards import REWARDS

        if len(specs) != 1 or not getattr(REWARDS.get(specs[0]["name"]) and _reward_class(specs[0]["name"]), "differentiable", False):
            raise ConfigError(f"{source}: evaluation.timing.reward: '{reward}' must be one differentiable reward "
                              f"(DRaFT back-propagates through it), e.g. pickscore or aesthetic")
        for method in TIMED_METHODS:
            timing_config(config, method)  # the timed runs exist and their configs are valid


def _reward_class(name: str):
    from drpo.rewards import _resolve

    return _resolve(name)


def judge_summaries(config: dict) -> list[dict]:
    """Every judge summary the config implies: test set, the judged model (DrPO, a run id), its
    opponent (a model id) and the summary's path."""
    return [{"test_set": ts, "judged": a, "opponent": b, "path": layout(config).judge_summary(ts, a, b)}
            for ts in config["evaluation"]["test_sets"] for a, b in judged_model_pairs(config)]


TIMED_METHODS = ("drpo", "draft")


def timing_runs(config: dict) -> dict[str, str]:
    """§6.3's two timed methods → the training run each is timed as (`evaluation.timing.runs`)."""
    timing = config.get("evaluation", {}).get("timing")
    return {m: (timing.get("runs") or {}).get(m, m) for m in TIMED_METHODS} if timing else {}


def timing_config(config: dict, method: str) -> dict:
    """The train config of one timed method (METHOD §6.3): its run's own config, scored by the timing
    reward, K candidates, effective_batch / K prompts per update in one process (a paper update
    spread over several GPUs runs on one here: seconds are per update of the whole batch), no
    tracking or checkpoints. DrPO: top/bottom K/2 anchors, reference drift off; DRaFT: one candidate
    per backward."""
    from drpo.config import to_dict
    from drpo.train.config import train_config_from_dict

    timing = config["evaluation"]["timing"]
    run = timing_runs(config)[method]
    rid = next((rid for rid, r in runs(config).items() if r.name == run), None)
    if rid is None:
        raise ConfigError(f"evaluation.timing.runs.{method}: {run!r} names no training run; runs are {sorted(config['training'].get('runs', {}))}")
    data = train_config(config, rid)
    k, batch = int(timing["candidates"]), int(timing["effective_batch"])
    if batch % k:
        raise ConfigError(f"evaluation.timing: effective_batch {batch} is not a multiple of candidates {k}")
    data.update(method=method, steps=int(timing.get("warmup", 1)) + int(timing.get("repeats", 3)), grad_accum=batch // k,
                prompts_per_micro_step=1, output_dir=layout(config).timing_run(method),
                reward=config["rewards"][timing["reward"]])
    data["checkpoint"] = {**data["checkpoint"], "every": 0}
    data["tracking"] = {**data["tracking"], "enabled": False, "sample_grid_every": 0}
    if method == "drpo":
        data["drpo"] = {**data["drpo"], "candidates": k, "positives": k // 2, "negatives": k // 2, "lambda_ref": 0.0}
    else:
        data["draft"] = {**data["draft"], "candidates": k, "chunk": 1}
    return to_dict(train_config_from_dict(data, source=f"evaluation.timing ({method})"))


def write_timing_config(config: dict, method: str, out: str | Path) -> None:
    from drpo.io import write_text

    write_text(out, yaml.safe_dump(timing_config(config, method), sort_keys=False))


COMPARISON_LABELS = {"fid": "FID vs {reference}", "distance": "distance to {reference}"}


def collect_spec(config: dict, judged: list[dict] | None = None) -> dict:
    """What `drpo collect` needs to turn summaries into the tidy results file, and `drpo tables`
    to draw each table (its builder and paper table): the content of `<results>/collect_spec.json`.
    `judged`: the judge summaries (default: `judge_summaries(config)`)."""
    labels = {m: s["label"] for m, s in config["evaluation"]["metrics"].items() if s.get("label")}
    labels.update({m: COMPARISON_LABELS[m].format(reference=c["reference"]) for m, c in comparisons(config).items()})
    tables = {name: {**spec, "rows": table_rows(config, name), "metric_labels": labels} for name, spec in config.get("tables", {}).items()}
    return {
        "results": results_dir(config), "models": eval_models(config), "test_sets": config["evaluation"]["test_sets"],
        "metrics": list(config["evaluation"]["metrics"]) + list(comparisons(config)),
        "metric_specs": config["evaluation"]["metrics"],
        "tables": tables, "judged": judge_summaries(config) if judged is None else judged,
        "timing": {"path": layout(config).timing(), "runs": timing_runs(config)} if timing_runs(config) else None,
    }


def write_collect_spec(config: dict, out: str | Path) -> Path:
    """`<results>/collect_spec.json` (atomic): the file `drpo collect --spec` and `drpo tables --spec` read."""
    from drpo.io import write_json

    return write_json(out, collect_spec(config))


# -- the workflow's start and end (the Snakefile's onstart / onsuccess / onerror) -------------------


def workflow_started(config: dict, config_hash: str) -> None:
    """The warm interpreter (DRPO_PRELOAD=1), this invocation's MLflow parent run, and what every
    job's `drpo` reads from the environment: the store, the experiment, the config hash (drpo job
    tags its MLflow run with it) and the parent run. Runs after the DAG is built, never in a dry run."""
    import os

    from drpo.tracking import start_workflow_run

    if os.environ.get("DRPO_PRELOAD") == "1":
        from drpo import preload

        preload.start(log=layout(config).log("preload"))
    uri, experiment = config["tracking"]["uri"], config["experiment"]
    parent = start_workflow_run(uri, experiment, config_hash, run_name=f"workflow-{config_hash}")
    os.environ.update(DRPO_MLFLOW_URI=uri, DRPO_MLFLOW_EXPERIMENT=experiment, DRPO_CONFIG_HASH=config_hash,
                      DRPO_MLFLOW_PARENT_RUN_ID=parent or "")


def workflow_ended(status: str) -> None:
    """Stop the warm interpreter and end the parent run (FINISHED or FAILED); never raises."""
    import os

    from drpo import preload
    from drpo.tracking import end_workflow_run

    preload.stop()
    end_workflow_run(os.environ.get("DRPO_MLFLOW_PARENT_RUN_ID", ""), status)
