"""`drpo fetch`: the complete plan of both paper studies (all missing on this machine, every one named
by the offline run), present items found where the project looks (a folder, a file, the Hugging Face
cache), and the resumable, sha256-checked URL downloader against a local 127.0.0.1 server."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from drpo import fetch as F
from drpo import workflow as wf

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper"

COMMON = {
    ("model", "yuvalkirstain/PickScore_v1"),
    ("processor", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"),
    ("model", "openai/clip-vit-large-patch14"),
    ("weights", "models/sac+logos+ava1-l14-linearMSE.pth"),
    ("environment", "envs/imagereward"),
}
EXPECTED = {
    "sd-turbo.yaml": COMMON | {
        ("model", "stabilityai/sd-turbo"),
        ("model", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
        ("model", "SimianLuo/LCM_Dreamshaper_v7"),
        ("model", "stabilityai/stable-diffusion-2-1"),
        ("model", "facebook/dinov2-base"),  # the feature-map ablation's DINOv2 point
        ("weights", "models/mae_latent_256_torch.pth"),
        ("weights", "models/inception-2015-12-05.pt"),
        ("dataset", "data/pickapic_v2/train-00000-of-00645.parquet"),
        ("environment", "envs/geneval"),
        ("environment", "envs/hpsv3"),
        ("checkout", "models/geneval"),
    },
    "sdxl-turbo.yaml": COMMON | {
        ("model", "stabilityai/sdxl-turbo"),
        ("model", "stabilityai/stable-diffusion-xl-base-1.0"),
        ("model", "mhdang/dpo-sdxl-text2image-v1"),
        ("model", "facebook/vit-mae-base"),
        ("model", "Qwen/Qwen3-VL-8B-Instruct"),
    },
}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache and a working directory without models/, data/ or envs/."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


def _expected(name: str, config: dict) -> set[tuple[str, str]]:
    files = {("prompts", s["path"]) for s in config["prompt_sets"].values() if s["source"] == "file"}
    return EXPECTED[name] | files


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), **extra}


def _drpo(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drpo.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


# -- (a) the paper studies -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_paper_plan_is_complete_and_all_missing_here(name, empty_cache):
    config = wf.load_config(PAPER / name)
    items = F.build_plan(config)
    assert {(i.kind, i.name) for i in items} == _expected(name, config)
    assert not [i.name for i in items if i.present]
    by_name = {i.name: i for i in items}
    for item in items:
        assert item.how and item.problem and item.used_by and item.dest, item

    if name == "sdxl-turbo.yaml":
        turbo = by_name["stabilityai/sdxl-turbo"]
        assert turbo.variant == "fp16" and turbo.fetch == "hf"
        assert F._matches("unet/diffusion_pytorch_model.fp16.safetensors", turbo.patterns)
        assert not F._matches("unet/diffusion_pytorch_model.safetensors", turbo.patterns)
        assert by_name["Qwen/Qwen3-VL-8B-Instruct"].used_by == ["evaluation.judge.model"]
        assert by_name["facebook/vit-mae-base"].used_by == ["training.defaults.features.options.path"]
    else:
        turbo = by_name["stabilityai/sd-turbo"]
        assert turbo.variant is None
        assert F._matches("unet/diffusion_pytorch_model.safetensors", turbo.patterns)
        assert F._matches("text_encoder/model.safetensors", turbo.patterns)
        mae = by_name["models/mae_latent_256_torch.pth"]
        assert mae.fetch == "url" and "modelscope.cn" in mae.url and "jiangzhou130v1/drpo-mae-latent-256" in mae.url
        inception = by_name["models/inception-2015-12-05.pt"]
        assert inception.url == F.INCEPTION_URL and inception.sha256 is None
        assert by_name["data/pickapic_v2/train-00000-of-00645.parquet"].fetch == "hf-dataset"
        assert set(by_name["envs/imagereward"].used_by) == {
            "evaluation.metrics.imagereward.options.python", "evaluation.metrics.hpsv2.options.python"}
        assert by_name["facebook/dinov2-base"].used_by == ["training.ablations.features.values.options.path"]
        assert "download_models.sh" in by_name["models/geneval"].how
    for pattern in turbo.patterns:  # no single-file checkpoints, no .ckpt or .bin duplicates
        for dup in ("sd_turbo.safetensors", "sd_xl_turbo_1.0_fp16.safetensors", "unet/diffusion_pytorch_model.bin", "v1-5.ckpt"):
            assert not F._matches(dup, [pattern]), (pattern, dup)
    aesthetic = by_name["models/sac+logos+ava1-l14-linearMSE.pth"]
    assert aesthetic.url == F.AESTHETIC_URL and "christophschuhmann/improved-aesthetic-predictor" in aesthetic.url
    text = F.format_plan(items)
    assert f"{len(items)} items: 0 present, {len(items)} missing" in text and "approximate" in text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_offline_run_exits_nonzero_naming_every_missing_item(name, tmp_path, empty_cache, capsys):
    from drpo.cli import main

    config = wf.load_config(PAPER / name)
    proc = _drpo(["fetch", "--config", str(PAPER / name)], tmp_path, _env(tmp_path, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 1, proc.stderr
    expected = _expected(name, config)
    assert f"{len(expected)} item(s) missing (offline: HF_HUB_OFFLINE=1" in proc.stderr
    report = proc.stderr.split("how to get each:", 1)[1]
    for _kind, item in expected:
        assert f"  - {item} [" in report, item
    assert "curl -L --fail -o 'models/sac+logos+ava1-l14-linearMSE.pth'" in report
    assert "conda env create -f envs/imagereward.yaml -p envs/imagereward" in report
    # the dry run prints the same plan and succeeds; --offline is the same as HF_HUB_OFFLINE=1
    assert main(["fetch", "--config", str(PAPER / name), "--dry-run"]) == 0
    assert f"{len(expected)} items: 0 present" in capsys.readouterr().out
    assert main(["fetch", "--config", str(PAPER / name), "--offline"]) == 1
    assert f"{len(expected)} item(s) missing (offline: --offline" in capsys.readouterr().err


def test_urls_match_the_installed_sources():
    spec = importlib.util.find_spec("cleanfid")
    helper = Path(spec.origin).parent / "downloads_helper.py"
    assert F.INCEPTION_URL in helper.read_text()
    assert F.INCEPTION_URL in (ROOT / "drpo" / "eval" / "fid.py").read_text()
    assert F.LATENT_MAE_REPO in (ROOT / "drpo" / "models" / "latent_mae.py").read_text()


def test_defaults_match_the_loaders():
    import inspect

    from drpo.eval.judge_backends import DEFAULT_QWEN
    from drpo.models import features
    from drpo.rewards import clip_based

    assert F.PICKSCORE_DEFAULT == clip_based.PickScore.default_path
    assert F.CLIP_DEFAULT == clip_based.ClipScore.default_path
    params = inspect.signature(clip_based.Aesthetic.__init__).parameters
    assert (params["path"].default, params["clip"].default) == (F.AESTHETIC_DEFAULT, F.CLIP_DEFAULT)
    assert F.QWEN_DEFAULT == DEFAULT_QWEN
    handled = set(F.FEATURE_DEFAULT_PATHS) | F.FEATURES_WITHOUT_WEIGHTS | {"latent_mae"}
    assert set(features.FEATURE_MAPS) == handled
    for name, path in F.FEATURE_DEFAULT_PATHS.items():
        assert inspect.signature(features.FEATURE_MAPS[name].__init__).parameters["path"].default == path


def test_refine_patterns_falls_back_like_the_loaders():
    pipe = ["model_index.json", "sd_turbo.safetensors", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.fp16.safetensors", "text_encoder/config.json", "text_encoder/pytorch_model.bin",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"]
    plain = F.refine_patterns(pipe, F.hub_patterns("diffusers"), "diffusers")
    assert "text_encoder/pytorch_model.bin" in plain  # no safetensors there: the .bin
    fp16 = F.refine_patterns(pipe, F.hub_patterns("diffusers", "fp16"), "diffusers", "fp16")
    assert "vae/diffusion_pytorch_model.safetensors" in fp16  # no fp16 file in vae/: the plain one
    chosen = [f for f in pipe if F._matches(f, fp16)]
    assert "sd_turbo.safetensors" not in chosen and "unet/diffusion_pytorch_model.safetensors" not in chosen
    model = ["config.json", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "tokenizer.json"]
    chosen = [f for f in model if F._matches(f, F.refine_patterns(model, F.hub_patterns("transformers"), "transformers"))]
    assert chosen == ["config.json", "pytorch_model.bin", "tokenizer.json"]


def test_help_describes_every_option_with_its_default(capsys):
    from drpo.cli import main

    with pytest.raises(SystemExit):
        main(["fetch", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for option in ("--config", "--dry-run", "--models-dir", "--offline", "--pickapic-repo", "--timeout", "--json"):
        assert option in out
    assert out.count("(default") >= 6 and "exit status" in out and "HF_HUB_OFFLINE=1" in out


# -- (b) present items -----------------------------------------------------------------------------


def _write_pipeline(folder: Path, weights: bool = True) -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                                                         "safety_checker": [None, None]}))
    (folder / "unet" / "config.json").write_text("{}")
    if weights:
        (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"0")
    return folder


def _small_config(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "prompts.txt").write_text("a red cube\n")
    (tmp_path / "aes.pth").write_bytes(b"weights")
    config = {
        "experiment": "fetch-test",
        "results": str(tmp_path / "results"),
        "models": {"gen": {"path": str(model), "family": "sd-turbo"}},
        "prompt_sets": {"p": {"source": "file", "path": str(tmp_path / "prompts.txt")}},
        "rewards": {"clip": [{"name": "clip", "options": {"path": "openai/clip-vit-large-patch14"}}]},
        "training": {"defaults": {"features": {"name": "latent"}},
                     "runs": {"r": {"method": "drpo", "model": "gen", "reward": "clip", "prompts": "p"}}},
        "evaluation": {"test_sets": ["p"], "metrics": {"aesthetic": {"name": "aesthetic", "options": {
            "path": str(tmp_path / "aes.pth"), "clip": "openai/clip-vit-large-patch14"}}}},
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fake_cache_entry(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(data)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_present_local_folder_file_and_hf_cache_entry(tmp_path):
    config = _small_config(tmp_path, _write_pipeline(tmp_path / "gen"))
    cache = tmp_path / "hf" / "hub"
    env = _env(tmp_path, HF_HUB_OFFLINE="1")
    # before the cache entry exists: the CLIP model is the one missing item
    proc = _drpo(["fetch", "--config", str(config), "--dry-run", "--json"], tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    status = {i["name"]: i["present"] for i in json.loads(proc.stdout)}
    assert status == {str(tmp_path / "gen"): True, str(tmp_path / "aes.pth"): True, str(tmp_path / "prompts.txt"): True,
                      "openai/clip-vit-large-patch14": False}
    snapshot = _fake_cache_entry(cache, "openai/clip-vit-large-patch14", {"config.json": b"{}", "model.safetensors": b"0"})
    proc = _drpo(["fetch", "--config", str(config)], tmp_path, env)  # not a dry run: nothing missing, exit 0
    assert proc.returncode == 0, proc.stderr
    assert f"openai/clip-vit-large-patch14\n    kind model, size ~1.7 GB; present ({snapshot})" in proc.stdout
    assert "4 items: 4 present, 0 missing" in proc.stdout


def test_incomplete_folder_and_cache_entry_are_missing(tmp_path, empty_cache):
    config = wf.load_config(_small_config(tmp_path, _write_pipeline(tmp_path / "gen", weights=False)))
    _fake_cache_entry(empty_cache, "openai/clip-vit-large-patch14", {"config.json": b"{}"})  # no weights
    items = {i.name: i for i in F.build_plan(config)}
    assert not items[str(tmp_path / "gen")].present and "no weights in unet/" in items[str(tmp_path / "gen")].problem
    clip = items["openai/clip-vit-large-patch14"]
    assert not clip.present and "incomplete" in clip.problem
    (tmp_path / "aes.pth").unlink()
    (tmp_path / "aes.pth.part").write_bytes(b"abc")
    aes = F.locate(items[str(tmp_path / "aes.pth")])
    assert not aes.present and "partial download of 3 bytes" in aes.problem


def test_models_dir_folder_counts_as_present(tmp_path, empty_cache):
    config = wf.load_config(_small_config(tmp_path, _write_pipeline(tmp_path / "gen")))
    local = tmp_path / "models" / "clip-vit-large-patch14"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "model.safetensors").write_bytes(b"0")
    items = {i.name: i for i in F.build_plan(config, models_dir=str(tmp_path / "models"))}
    clip = items["openai/clip-vit-large-patch14"]
    assert clip.present and clip.location == str(local) and clip.dest == str(local)


# -- (c) URL downloads against 127.0.0.1 -----------------------------------------------------------


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        server = self.server
        data, rng = server.payload, self.headers.get("Range")
        server.requests.append(rng)
        start = int(rng.split("=", 1)[1].split("-", 1)[0]) if rng else 0
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if server.cut_after is not None:  # the first answer stops short and closes the connection
            cut, server.cut_after = server.cut_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A 127.0.0.1 HTTP server with Range support, in a thread; it stops at teardown, or after 60 s."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    httpd.daemon_threads = True
    httpd.payload = os.urandom(300_000)
    httpd.requests, httpd.cut_after = [], None
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    guard = threading.Timer(60, httpd.shutdown)
    guard.daemon = True
    guard.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/weights.pth"
    try:
        yield httpd
    finally:
        guard.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_full_download_with_the_right_sha256(server, tmp_path):
    dest = tmp_path / "models" / "weights.pth"
    out = F.download_url(server.url, dest, sha256=_sha(server.payload), timeout=5)
    assert out == dest and dest.read_bytes() == server.payload
    assert not dest.with_name("weights.pth.part").exists()
    assert server.requests == [None]
    F.download_url(server.url, dest, sha256=_sha(server.payload), timeout=5)  # present and right: no request
    assert server.requests == [None]


def test_cut_connection_resumes_from_the_part(server, tmp_path):
    dest = tmp_path / "weights.pth"
    part = tmp_path / "weights.pth.part"
    server.cut_after = 100_000
    F.download_url(server.url, dest, sha256=_sha(server.payload), timeout=5)  # retries within the call
    assert dest.read_bytes() == server.payload and not part.exists()
    assert server.requests[0] is None and server.requests[1].startswith("bytes=") and server.requests[1] != "bytes=0-"
    # across calls: a first call that may not retry leaves the .part; the next call continues it
    dest.unlink()
    server.requests.clear()
    server.cut_after = 120_000
    with pytest.raises(F.DownloadError, match="run again to resume"):
        F.download_url(server.url, dest, timeout=5, max_resumes=0)
    kept = part.stat().st_size
    assert 0 < kept < len(server.payload) and part.read_bytes() == server.payload[:kept] and not dest.exists()
    F.download_url(server.url, dest, sha256=_sha(server.payload), timeout=5)
    assert server.requests == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == server.payload and not part.exists()


def test_hash_mismatch_leaves_nothing_behind(server, tmp_path):
    dest = tmp_path / "weights.pth"
    with pytest.raises(F.ChecksumMismatch, match="deleted"):
        F.download_url(server.url, dest, sha256="0" * 64, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_unreachable_host_fail_fast(server, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(F.DownloadError):
        F.download_url(f"http://127.0.0.1:{port}/x.pth", tmp_path / "x.pth", timeout=5)
    assert time.monotonic() - start < 5 and list(tmp_path.iterdir()) == []
    # fetch_missing records the failure on the item and goes on
    item = F.Item(name="x.pth", kind="weights", source="test", dest=str(tmp_path / "x.pth"), fetch="url",
                  url=f"http://127.0.0.1:{port}/x.pth", problem="x.pth does not exist")
    good = F.Item(name="w.pth", kind="weights", source="test", dest=str(tmp_path / "w.pth"), fetch="url", url=server.url)
    F.fetch_missing([item, good], timeout=5, log=lambda m: None)
    assert not item.present and "unreachable" in item.problem
    assert good.present and (tmp_path / "w.pth").read_bytes() == server.payload


def test_hub_download_asks_for_the_loaded_files_only(tmp_path, monkeypatch, empty_cache):
    """download_hub with the hub calls stubbed: refined allow_patterns, online only inside, --models-dir."""
    import huggingface_hub
    from huggingface_hub import constants

    files = ["model_index.json", "sd_xl_turbo_1.0_fp16.safetensors", "unet/config.json",
             "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"]
    seen = {}

    def snapshot_download(repo_id, repo_type=None, allow_patterns=None, local_dir=None):
        seen.update(repo_id=repo_id, offline=constants.HF_HUB_OFFLINE, local_dir=local_dir,
                    files=[f for f in files if F._matches(f, allow_patterns)])
        folder = Path(local_dir)
        (folder / "unet").mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
        (folder / "unet" / "config.json").write_text("{}")
        (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"0")
        return str(folder)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, repo_type=None: files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    item = F.Item(name="stabilityai/sdxl-turbo", kind="model", source="test", fetch="hf", repo_id="stabilityai/sdxl-turbo",
                  layout="diffusers", variant="fp16", patterns=F.hub_patterns("diffusers", "fp16"))
    folder = F.download_hub(item, models_dir=str(tmp_path / "models"))
    assert folder == str(tmp_path / "models" / "sdxl-turbo") == seen["local_dir"]
    assert seen["offline"] is False and constants.HF_HUB_OFFLINE is True
    assert seen["files"] == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors"]
    assert F.locate(item, str(tmp_path / "models")).present and "point" in item.note
