"""Bad input and faults, as a new user meets them: one table, one case per row.

Each case builds its bad input in a fresh folder, runs one `drpo` command as a user would (through
`drpo.cli.main`, the console script's entry point), and asserts
  * the exit code,
  * the message: one `drpo <command>: error:` line naming the file, key or value (no traceback),
    or, where the fault is survivable (a corrupt newest checkpoint), the warning that names it,
  * the files left behind: finished work kept, nothing half-written (no atomic-write temp files).
Snakemake-level faults (shell injection, invalid edits on a used results folder, typos in the
workflow config) are in tests/test_workflow.py; reward-process faults in tests/test_rewards.py.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import link

from drpo.cli import main

TRAIN = {
    "method": "drpo", "steps": 3, "grad_accum": 1, "prompts_per_micro_step": 1, "output_dir": "run",
    "model": {"path": "MODEL"}, "prompts": {"path": "PROMPTS"}, "reward": "brightness",
    "features": {"name": "latent"}, "lora": {"rank": 4, "alpha": 4}, "optim": {"lr": 1e-2},
    "checkpoint": {"every": 1}, "tracking": {"enabled": False, "sample_grid_every": 0},
    "drpo": {"candidates": 6, "positives": 2, "negatives": 2},
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tiny_sd_turbo):
    """A tiny SD-Turbo, prompts, a finished 3-update run with a checkpoint per update, and samples."""
    root = tmp_path_factory.mktemp("faults")
    link(tiny_sd_turbo, root / "model")
    (root / "prompts.txt").write_text("a red circle\na blue square\ntwo green triangles\n")
    cfg = dict(TRAIN, model={"path": str(root / "model")}, prompts={"path": str(root / "prompts.txt")},
               output_dir=str(root / "run"))
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "run.yaml"), "--no-progress"]) == 0
    assert main(["sample", "--model", str(root / "model"), "--prompts", str(root / "prompts.txt"),
                 "--out", str(root / "samples"), "--no-progress"]) == 0
    return root


@dataclass
class Case:
    """`setup(dir, assets)` writes the bad input into `dir` and returns the drpo argv; `left(dir)`
    asserts on the files the command left behind."""

    id: str
    setup: Callable[[Path, Path], list[str]]
    message: str  # a substring of the error line (or of the warning, when code == 0)
    left: Callable[[Path], None] = lambda d: None
    code: int = 2
    extra: list[str] = field(default_factory=list)  # more substrings of the same line


# -- inputs ----------------------------------------------------------------------------------------


def train_config(d: Path, a: Path, **changes) -> Path:
    """A copy of the fixture's training config in `d` (its own output_dir), with changes."""
    cfg = yaml.safe_load((a / "run.yaml").read_text())
    cfg["output_dir"] = str(d / "run")
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = d / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def train(d: Path, a: Path, *args: str, **changes) -> list[str]:
    return ["train", "--config", str(train_config(d, a, **changes)), "--no-progress", *args]


def finished_run(d: Path, a: Path) -> Path:
    shutil.copytree(a / "run", d / "run")
    return d / "run"


def truncate(path: Path, keep: int = 20) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def resume_after_breaking(relative: str) -> Callable[[Path, Path], list[str]]:
    """The newest checkpoint of an interrupted run has one file cut short (a crash mid-copy, a full disk)."""

    def setup(d: Path, a: Path) -> list[str]:
        run = finished_run(d, a)
        shutil.rmtree(run / "final")
        truncate(run / "checkpoint-2" / relative)
        return train(d, a, "--resume", steps=3)

    return setup


def resumed_from_checkpoint_1(d: Path) -> None:
    assert (d / "run" / "final" / "training_state.json").exists()
    lines = (d / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # update 1 from checkpoint-1, then 2, 3 again


def no_output_dir(d: Path) -> None:
    assert not (d / "run").exists(), sorted(p.name for p in (d / "run").iterdir())


def absent(*names: str) -> Callable[[Path], None]:
    """The command wrote none of these (relative to the case's folder)."""

    def check(d: Path) -> None:
        present = [n for n in names if (d / n).exists()]
        assert not present, present

    return check


def corrupt_checkpoint_untouched_and_final_kept(d: Path) -> None:
    assert (d / "run" / "checkpoint-2" / "training_state.pt").stat().st_size == 20
    assert (d / "run" / "final" / "training_state.json").exists()


def finished_run_kept(d: Path) -> None:
    assert (d / "run" / "final" / "unet_lora" / "adapter_model.safetensors").exists()
    assert len((d / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def earlier_run_set_aside(d: Path) -> None:
    """--resume with another config trained afresh and kept the other config's run whole."""
    (kept,) = (d / "run" / "replaced").iterdir()
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint-1", "checkpoint-2", "config.json", "final", "metrics.jsonl"]
    assert json.loads((d / "run" / "config.json").read_text())["optim"]["lr"] == 5e-3
    assert (d / "run" / "final" / "training_state.json").exists()


def mlflow_says_failed(d: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{d}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("drpo").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (d / "run" / "final").exists()


def no_final(d: Path) -> None:
    assert (d / "run").is_dir() and not (d / "run" / "final").exists()


def write(d: Path, name: str, data: bytes | str) -> Path:
    path = d / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def score(manifest: Path | str, d: Path, *args: str) -> list[str]:
    return ["score", "--manifest", str(manifest), "--out", str(d / "scores.parquet"), "--no-progress", *args]


def samples_copy(d: Path, a: Path) -> Path:
    shutil.copytree(a / "samples", d / "samples")
    return d / "samples" / "manifest.jsonl"


def command_reward(d: Path, a: Path, body: str, **options) -> list[str]:
    script = write(d, "reward.py", body)
    opts = {"command": [sys.executable, str(script)], "retries": 0, "timeout": 5, **options}
    return score(samples_copy(d, a), d, "--reward", "command", "--options", json.dumps(opts))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parquet_shard(d: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = d / "train-00000-of-00001.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def pickapic_columns(n: int = 4) -> dict:
    from io import BytesIO

    from PIL import Image

    def png(v: int) -> bytes:
        buf = BytesIO()
        Image.new("RGB", (8, 8), (v, v, v)).save(buf, format="PNG")
        return buf.getvalue()

    return {"caption": [f"caption {i}" for i in range(n)], "jpg_0": [png(10 * i) for i in range(n)],
            "jpg_1": [png(200 - i) for i in range(n)], "label_0": [1.0] * n, "label_1": [0.0] * n}


def pairs(parquet: Path, d: Path) -> list[str]:
    return ["prompts", "pickapic-pairs", "--parquet", str(parquet), "--out", str(d / "pairs")]


# -- the table --------------------------------------------------------------------------------------

CASES = [
    # training configs
    Case("empty training config", lambda d, a: ["train", "--config", str(write(d, "empty.yaml", ""))],
         "empty.yaml is empty", absent("results", "mlruns", "run")),
    Case("duplicate key", lambda d, a: ["train", "--config", str(write(d, "dup.yaml", "steps: 3\nsteps: 4\n"))],
         "key 'steps' appears twice", extra=["dup.yaml"]),
    Case("not YAML", lambda d, a: ["train", "--config", str(write(d, "bad.yaml", "steps: [3\n"))], "bad.yaml: not valid YAML"),
    Case("config not UTF-8", lambda d, a: ["train", "--config", str(write(d, "latin.yaml", b"# caf\xe9\nsteps: 3\n"))],
         "latin.yaml:1: not UTF-8 text (byte 0xe9)", extra=["iconv"]),
    Case("config file missing", lambda d, a: ["train", "--config", str(d / "nope.yaml")], "nope.yaml does not exist"),
    Case("misspelled key", lambda d, a: train(d, a, drpo__candidatess=8), "candidatess"),
    Case("wrong type", lambda d, a: train(d, a, steps="many"), "steps", extra=["many"]),
    Case("more positives and negatives than candidates", lambda d, a: train(d, a, drpo__positives=5),
         "positives", extra=["candidates"], left=no_output_dir),
    Case("unknown method", lambda d, a: train(d, a, method="dpoo"), "dpoo"),
    Case("unknown reward", lambda d, a: train(d, a, reward="brightnes"), "brightnes", extra=["known rewards"],
         left=no_output_dir),
    Case("--set without =", lambda d, a: train(d, a, "--set", "steps"), "--set 'steps': expected KEY.PATH=VALUE"),
    Case("--set brings the error", lambda d, a: train(d, a, "--set", "drpo.negatives=9"), "--set", extra=["negatives"]),
    # prompts
    Case("prompt file missing", lambda d, a: train(d, a, prompts__path=str(d / "gone.txt")),
         "gone.txt does not exist (config key prompts.path)", left=no_output_dir),
    Case("prompts not UTF-8", lambda d, a: train(d, a, prompts__path=str(write(d, "p.txt", b"a red circle\na caf\xe9\n"))),
         "p.txt:2: not UTF-8 text", left=no_output_dir),
    Case("prompt file empty", lambda d, a: train(d, a, prompts__path=str(write(d, "p.txt", "\n\n"))), "p.txt holds no prompts"),
    Case("bad JSON prompt row", lambda d, a: train(d, a, prompts__path=str(write(d, "p.txt", 'a cat\n{"prompt": \n'))),
         "p.txt:2: not valid JSON"),
    Case("JSON prompt row without prompt", lambda d, a: train(d, a, prompts__path=str(write(d, "p.txt", '{"text": "a cat"}\n'))),
         "p.txt:1: a JSON prompt row needs a 'prompt' key"),
    # models
    Case("model missing", lambda d, a: train(d, a, model__path=str(d / "no-model")), "no-model",
         left=absent("results", "run")),
    Case("model id not in the cache", lambda d, a: train(d, a, model__path="stabilityai/sd-turbo-nope"),
         "stabilityai/sd-turbo-nope", extra=["hf download"], left=absent("results", "run")),
    # checkpoints: the newest is corrupt -> the one before it, with a warning naming the file
    Case("truncated training_state.pt", resume_after_breaking("training_state.pt"),
         "checkpoint-2/training_state.pt: unreadable or truncated", left=resumed_from_checkpoint_1, code=0),
    Case("truncated training_state.json", resume_after_breaking("training_state.json"),
         "checkpoint-2/training_state.json: unreadable or truncated", left=resumed_from_checkpoint_1, code=0),
    Case("truncated checkpoint LoRA", resume_after_breaking("unet_lora/adapter_model.safetensors"),
         "checkpoint-2/unet_lora/adapter_model.safetensors: unreadable or truncated", left=resumed_from_checkpoint_1, code=0),
    Case("--resume a corrupt checkpoint",
         lambda d, a: (truncate(finished_run(d, a) / "checkpoint-2" / "training_state.pt"),
                       train(d, a, "--resume", str(d / "run" / "checkpoint-2")))[1],
         "checkpoint-2/training_state.pt: unreadable or truncated",
         left=corrupt_checkpoint_untouched_and_final_kept),
    Case("--resume a folder that is no checkpoint", lambda d, a: train(d, a, "--resume", str(d)),
         "not a complete checkpoint (no training_state.json)"),
    # a diverged run fails and keeps its last good checkpoint; no final/
    Case("diverged run", lambda d, a: train(d, a, optim__lr=1e30, steps=3),
         "training diverged at update", extra=["Lower optim.lr"],
         left=no_final),
    Case("--resume with another config's checkpoints", lambda d, a: (finished_run(d, a), train(d, a, "--resume", optim__lr=5e-3))[1],
         "were trained with another config", left=earlier_run_set_aside, code=0),
    Case("reward crashes mid-training: MLflow says FAILED",
         lambda d, a: train(d, a, reward={"name": "command", "options": {
             "command": [sys.executable, str(write(d, "r.py", "import sys\nsys.exit(7)\n"))], "retries": 0}},
             tracking={"enabled": True, "uri": f"sqlite:///{d}/mlflow.db", "sample_grid_every": 0}),
         "reward command", extra=["exited with code 7"], left=mlflow_says_failed),
    Case("a failed re-run keeps the finished run",
         lambda d, a: (finished_run(d, a), train(d, a, model__path=str(d / "no-model")))[1], "no-model",
         left=finished_run_kept),
    # sampling
    Case("sample without options", lambda d, a: ["sample"], "--model", extra=["--prompts", "--out"]),
    Case("sample a corrupt LoRA",
         lambda d, a: (truncate(finished_run(d, a) / "final" / "unet_lora" / "adapter_model.safetensors"),
                       ["sample", "--model", str(a / "model"), "--lora", str(d / "run" / "final"),
                        "--prompts", str(a / "prompts.txt"), "--out", str(d / "s"), "--no-progress"])[1],
         "final/unet_lora/adapter_model.safetensors: unreadable or truncated",
         left=absent("s/manifest.jsonl")),
    Case("sample prompts not UTF-8",
         lambda d, a: ["sample", "--model", str(a / "model"), "--prompts", str(write(d, "p.txt", b"\xff\xfea\x00")),
                       "--out", str(d / "s"), "--no-progress"], "p.txt:1: not UTF-8 text"),
    # scoring
    Case("score a missing manifest", lambda d, a: score(d / "m.jsonl", d, "--reward", "brightness"), "m.jsonl"),
    Case("score a manifest with a broken line",
         lambda d, a: score(write(d, "m.jsonl", '{"prompt": "a"}\n{"prompt"\n'), d, "--reward", "brightness"),
         "m.jsonl:2: not valid JSON"),
    Case("score a truncated image",
         lambda d, a: (truncate(next((samples_copy(d, a).parent).glob("seed_*/images/000001.png")), 40),
                       score(d / "samples" / "manifest.jsonl", d, "--reward", "brightness"))[1],
         "cannot be read", extra=["000001.png", "re-run `drpo sample`"], left=absent("scores.parquet")),
    Case("reward command crashes", lambda d, a: command_reward(d, a, "import sys\nsys.stderr.write('CUDA out of memory\\n')\nsys.exit(3)\n"),
         "reward command", extra=["CUDA out of memory"], left=absent("scores.parquet")),
    Case("reward command prints garbage", lambda d, a: command_reward(d, a, "import sys\nsys.stdin.read()\nprint('hello')\n"),
         "reward command", extra=["hello"], left=absent("scores.parquet")),
    Case("reward command gives too few scores", lambda d, a: command_reward(d, a, "import sys\nsys.stdin.read()\nprint(0.5)\n"),
         "reward command", extra=["1 score"]),
    Case("reward command hangs", lambda d, a: command_reward(d, a, "import time\ntime.sleep(60)\n", timeout=1),
         "reward command", extra=["no answer within 1 s", "killed"]),
    Case("reward command not found",
         lambda d, a: score(samples_copy(d, a), d, "--reward", "command", "--options",
                            json.dumps({"command": [str(d / "no-such-scorer")], "retries": 0})),
         "no-such-scorer", extra=["cannot run it"]),
    Case("http reward refused", lambda d, a: score(samples_copy(d, a), d, "--reward", "http", "--options",
                                                   json.dumps({"url": f"http://127.0.0.1:{closed_port()}/score", "retries": 0})),
         "reward http", extra=["127.0.0.1"]),
    Case("http reward answers 500", lambda d, a: score(samples_copy(d, a), d, "--reward", "http", "--options",
                                                       json.dumps({"url": SERVER.url + "/error", "retries": 0})),
         "500", extra=["reward http"]),
    Case("http reward answers NaN", lambda d, a: score(samples_copy(d, a), d, "--reward", "http", "--options",
                                                       json.dumps({"url": SERVER.url + "/nan", "retries": 0})),
         "reward http", extra=["nan"]),
    Case("bad reward options", lambda d, a: score(samples_copy(d, a), d, "--reward", "brightness", "--options", "{path"),
         "--options"),
    # data
    Case("truncated parquet", lambda d, a: (p := parquet_shard(d, pickapic_columns()), truncate(p, 200), pairs(p, d))[2],
         "train-00000-of-00001.parquet: unreadable or truncated", extra=["download the shard again"],
         left=absent("pairs/pairs.jsonl")),
    Case("parquet of another schema", lambda d, a: pairs(parquet_shard(d, {"caption": ["x"]}), d),
         "lacks column(s)", extra=["jpg_0"], left=absent("pairs/pairs.jsonl")),
    Case("parquet missing", lambda d, a: pairs(d / "gone.parquet", d), "gone.parquet does not exist"),
    # tables and report
    Case("report without tables", lambda d, a: ["report", "--tables", str(d / "nope"), "--out", str(d / "r.html")], "nope",
         left=absent("r.html")),
    Case("collect without a spec", lambda d, a: ["collect", "--spec", str(d / "spec.json"), "--out", str(d / "r.csv")],
         "--spec", extra=["no such file"], left=absent("r.csv")),
    Case("tables spec without tables", lambda d, a: ["tables", "--spec", str(write(d, "spec.yaml", "rows: 1\n")),
                                                     "--results", str(write(d, "r.csv", "table,method\n")), "--out", str(d / "t")],
         "no `tables:` mapping"),
    Case("judge a missing sample set", lambda d, a: ["judge", "--a", str(d / "x"), "--b", str(d / "y"), "--backend", "world",
                                                     "--out", str(d / "j.jsonl")],
         "x does not exist", extra=["manifest.jsonl"]),
]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        body = json.dumps({"scores": [float("nan")] * 3}).encode()  # json.dumps writes NaN
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server:
    url = ""


SERVER = _Server()


@pytest.fixture(scope="module", autouse=True)
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    SERVER.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield
    server.shutdown()


def temp_files(root: Path) -> list[str]:
    """Leftovers of an interrupted atomic write (drpo.io's `.<name>.<random><suffix>`, `.<dir>.tmp`)."""
    return [str(p) for p in root.rglob(".*") if p.name not in (".", "..") and ("tmp" in p.name or p.name.count(".") >= 2)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, assets, tmp_path, capfd, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray ./results or ./mlruns would land here
    monkeypatch.delenv("DRPO_DEBUG", raising=False)
    argv = case.setup(tmp_path, assets)
    capfd.readouterr()
    code = main(argv)
    out, err = capfd.readouterr()
    err += "".join(f"{r.getMessage()}\n" for r in caplog.records if r.levelname == "WARNING")
    assert code == case.code, err
    assert "Traceback" not in err, err
    if case.code:
        errors = [line for line in err.splitlines() if line.startswith(f"drpo {argv[0]}: error:")]
        assert len(errors) == 1, err
        line = err[err.index(errors[0]):]  # the error line and what follows it (a fetch command)
    else:
        line = next((line for line in (err + out).splitlines() if case.message in line), "")
    for expected in [case.message, *case.extra]:
        assert expected in line, f"{expected!r} not in {line!r}"
    case.left(tmp_path)
    assert temp_files(tmp_path) == []


def test_the_table_holds_every_case_once():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 45


def test_debug_shows_the_traceback(assets, tmp_path, capfd):
    argv = ["train", "--config", str(write(tmp_path, "empty.yaml", "")), "--debug"]
    with pytest.raises(ValueError, match="is empty"):
        main(argv)
    assert main(argv[:-1]) == 2 and "drpo train: error:" in capfd.readouterr().err
