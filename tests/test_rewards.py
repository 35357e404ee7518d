"""Rewards: one call shape, tiny CLIP scorers, the worker protocol, black boxes that fail loudly,
z-scored ensembles. Every process and server here is real (subprocesses, http.server on 127.0.0.1)."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import drpo.rewards as R
from drpo.hub import ModelNotFoundError
from drpo.rewards import Reward, RewardError, build_reward, build_reward_ensemble, register_reward

PROMPTS = ["a photo of a red circle", "a photo of a blue square", "a photo of two triangles"]
WORDS = "a photo of red blue green circle square two triangles".split()
PY = sys.executable


def images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def pixels(imgs: torch.Tensor) -> torch.Tensor:
    return (imgs.float() / 127.5 - 1).requires_grad_(True)


# -- registry and the call shape ----------------------------------------------------------------------

def test_importing_rewards_is_light_and_the_worker_is_standalone():
    code = "import sys, drpo.rewards; bad = [m for m in ('transformers', 'drpo.world', 'requests') if m in sys.modules]; print(bad)"
    assert subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    # the worker runs in other environments by file path: no drpo, no torch
    folder = Path(R.__file__).parent
    code = f"import sys; sys.path.insert(0, {str(folder)!r}); import worker; print([m for m in ('torch', 'drpo') if m in sys.modules])"
    assert subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_specs_names_and_options_are_checked():
    with pytest.raises(ValueError, match="'hps9000' is not registered; known rewards: .*pickscore"):
        build_reward({"name": "hps9000"})
    with pytest.raises(ValueError, match=r"unknown options \['tagret'\]; Brightness accepts \['batch_size', 'target'\]"):
        build_reward({"name": "brightness", "options": {"tagret": 0.5}})
    with pytest.raises(ValueError, match=r"unknown keys \['option'\]"):
        build_reward({"name": "brightness", "option": {}})
    reward = build_reward("brightness")
    with pytest.raises(ValueError, match="uint8 tensor"):
        reward(images().float(), PROMPTS)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        reward(images(), PROMPTS[:2])
    out = reward(images(), PROMPTS)
    assert out.dtype == torch.float32 and out.shape == (3,)
    assert torch.allclose(out, images().float().mean(dim=(1, 2, 3)) / 255)
    # device option overrides the build device (cuda would fail on this CPU machine)
    assert build_reward({"name": "brightness", "options": {"device": "cpu"}}, device="cuda:7").device.type == "cpu"


def test_lazy_table_entries_with_default_options(monkeypatch):
    monkeypatch.setitem(R.REWARDS, "half_bright", R.RewardEntry("drpo.rewards.simple:Brightness", {"target": 0.5}))
    r = build_reward("half_bright")
    assert r.name == "half_bright" and r.target == 0.5
    assert build_reward({"name": "half_bright", "options": {"target": 0.1}}).target == 0.1  # spec wins
    monkeypatch.setitem(R.REWARDS, "broken", R.RewardEntry("drpo.no_such_module:Thing"))
    with pytest.raises(ValueError, match="reward 'broken': cannot load drpo.no_such_module:Thing"):
        build_reward("broken")


def test_world_checker_names_resolve_lazily_to_the_world_module():
    code = textwrap.dedent("""
        import sys
        from drpo.rewards import build_reward
        assert "drpo.world.rewards" not in sys.modules
        a, b = build_reward({"name": "world_checker"}), build_reward({"name": "world_checker_graded"})
        print(type(a).__module__, type(a).__name__, a.graded, b.graded, a.name, b.name)
    """)
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["drpo.world.rewards", "CheckerReward", "False", "True", "world_checker", "world_checker_graded"]


def test_register_reward_and_a_single_spec_ensemble_is_that_reward(monkeypatch):
    monkeypatch.setattr(R, "REWARDS", dict(R.REWARDS))

    @register_reward("channel_test")
    class ChannelTest(Channel):
        pass

    single = build_reward_ensemble([{"name": "channel_test", "weight": 3.0, "options": {"c": 2}}])
    assert type(single) is ChannelTest and single.c == 2 and single.name == "channel_test"
    imgs = images(5)
    assert torch.equal(single(imgs, ["p"] * 5), imgs[:, 2].float().mean(dim=(1, 2)))  # unchanged, not z-scored
    with pytest.raises(TypeError, match="not a subclass"):
        register_reward("nope")(dict)


# -- CLIP-based rewards on a tiny CLIP of the real classes ----------------------------------------------

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from drpo.models.tiny import build_tiny_clip

    folder = tmp_path_factory.mktemp("clip")
    build_tiny_clip(folder, words=WORDS, image_size=32)  # CLIPModel + CLIPProcessor(CLIPTokenizer, CLIPImageProcessor 32)
    return folder


@pytest.fixture(scope="module")
def pick(clip_dir):
    return build_reward({"name": "pickscore", "options": {"path": str(clip_dir)}})


def test_tiny_clip_tokenizer_reloads_with_its_vocabulary(pick):
    tok = pick.backbone.processor.tokenizer
    ids = tok(PROMPTS[0])["input_ids"]
    unk = tok.convert_tokens_to_ids(tok.unk_token) if tok.unk_token else None
    assert len(ids) == 2 + 6 and len(set(ids[1:-1])) == 5 and unk not in ids[1:-1]  # a photo of a red circle
    assert tok(PROMPTS[1])["input_ids"] != ids
    assert pick.backbone.size == 32 and pick.backbone.max_length == 20


def test_pickscore_cosine_logit_batching_and_prompt_sensitivity(clip_dir, pick):
    imgs = images(6)
    prompts = PROMPTS + PROMPTS
    cos = pick(imgs, prompts)
    assert cos.shape == (6,) and cos.dtype == torch.float32 and torch.isfinite(cos).all() and cos.abs().max() <= 1
    logit = build_reward({"name": "pickscore", "options": {"path": str(clip_dir), "scale": "logit", "batch_size": 4}})(imgs, prompts)
    scale = pick.backbone.logit_scale
    assert scale == pytest.approx(float(pick.backbone.model.logit_scale.exp()))
    assert torch.allclose(logit, scale * cos, atol=1e-5)  # batch 4 vs 32: same numbers
    # the text path matters: the same image under another prompt scores differently
    same = pick(imgs[:1].repeat(3, 1, 1, 1), PROMPTS)
    assert same.max() - same.min() > 1e-3
    half = build_reward({"name": "pickscore", "options": {"path": str(clip_dir), "dtype": "bfloat16"}})
    assert half.backbone.model.dtype == torch.bfloat16
    assert torch.allclose(half(imgs, prompts), cos, atol=0.05) and half(imgs, prompts).dtype == torch.float32
    with pytest.raises(ValueError, match="scale must be cosine or logit"):
        build_reward({"name": "pickscore", "options": {"path": str(clip_dir), "scale": "x100"}})


def test_pickscore_differentiable_path_matches_and_gradients_reach_pixels(pick):
    scale = pick.backbone.logit_scale
    imgs = images(6, size=32, seed=1)
    x = pixels(imgs)
    diff = pick.score_differentiable(x, PROMPTS + PROMPTS)
    diff.sum().backward()
    assert diff.dtype == torch.float32 and x.grad is not None and x.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all()
    # model size: no resize, no crop → the two paths see the same pixels
    assert torch.allclose(diff.detach(), scale * pick(imgs, PROMPTS + PROMPTS), atol=1e-4 * scale)
    # 48 px: PIL resize (uint8) vs. tensor antialiased resize differ a little; documented, checked loosely
    big = images(8, size=48, seed=2)
    prompts = (PROMPTS * 3)[:8]
    a = scale * pick(big, prompts)
    with torch.no_grad():
        b = pick.score_differentiable(pixels(big), prompts)
    assert (a - b).abs().max() < 0.1 * (a.max() - a.min())
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.98


def test_each_distinct_prompt_is_encoded_once_and_the_cache_is_bounded(clip_dir, monkeypatch):
    fresh = build_reward({"name": "pickscore", "options": {"path": str(clip_dir)}})
    backbone = fresh.backbone
    encoded: list[int] = []
    text = backbone.model.get_text_features
    monkeypatch.setattr(backbone.model, "get_text_features", lambda **kw: encoded.append(len(kw["input_ids"])) or text(**kw))
    other = build_reward({"name": "pickscore", "options": {"path": str(clip_dir)}}).backbone
    reference = torch.cat([other.text_embeds([p]) for p in PROMPTS])  # each prompt on its own
    # K = 4 candidates of each of 3 prompts in one call: 3 texts encoded, in one batch
    emb = backbone.text_embeds([p for p in PROMPTS for _ in range(4)])
    assert encoded == [3] and emb.shape[0] == 12
    assert torch.allclose(emb, reference.repeat_interleave(4, dim=0), atol=1e-6)
    # DRaFT's stream, one candidate per call: nothing more to encode
    for p in PROMPTS * 2:
        assert torch.allclose(backbone.text_embeds([p])[0], reference[PROMPTS.index(p)], atol=1e-6)
    assert encoded == [3]
    # the least recently used prompt goes first once the cache is full
    monkeypatch.setattr(type(backbone), "TEXT_CACHE", 3)
    backbone.text_embeds([PROMPTS[0], "a photo of a blue circle"])
    assert list(backbone._text_cache) == [PROMPTS[2], PROMPTS[0], "a photo of a blue circle"] and encoded == [3, 1]
    # more distinct prompts in one call than the cache holds still come back whole
    many = [f"a photo of {w}" for w in ("a", "two", "red", "blue", "circle")]
    assert backbone.text_embeds(many).shape[0] == 5 and len(backbone._text_cache) == 3
    # embeddings cached while ranking under inference_mode still serve DRaFT's differentiable path
    with torch.inference_mode():
        fresh(images(2), [PROMPTS[1]] * 2)
    x = pixels(images(2, size=32, seed=3))
    fresh.score_differentiable(x, [PROMPTS[1]] * 2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_clip_score_is_not_differentiable(clip_dir):
    clip = build_reward({"name": "clip", "options": {"path": str(clip_dir)}})
    assert not clip.differentiable and clip(images(), PROMPTS).shape == (3,)
    with pytest.raises(NotImplementedError, match="not differentiable"):
        clip.score_differentiable(pixels(images()), PROMPTS)


def test_aesthetic_mlp_numbers_safe_loading_and_gradients(clip_dir, tmp_path):
    from safetensors.torch import save_file

    from drpo.rewards.clip_based import AestheticMLP

    torch.manual_seed(0)
    mlp = AestheticMLP(32)
    keys = sorted(mlp.state_dict())
    assert keys == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))  # LAION's names
    torch.save(mlp.state_dict(), tmp_path / "aes.pth")
    save_file(mlp.state_dict(), str(tmp_path / "aes.safetensors"))
    opts = {"clip": str(clip_dir)}
    aes = build_reward({"name": "aesthetic", "options": {"path": str(tmp_path / "aes.pth"), **opts}})
    imgs = images(4)
    s = aes(imgs, ["ignored"] * 4)
    assert s.shape == (4,) and torch.isfinite(s).all()
    assert torch.allclose(aes(imgs, ["other prompt"] * 4), s)  # prompt ignored
    s2 = build_reward({"name": "aesthetic", "options": {"path": str(tmp_path / "aes.safetensors"), **opts}})(imgs, [""] * 4)
    assert torch.allclose(s, s2)
    # the number: MLP on the L2-normalised image embedding, eval mode (no dropout)
    bb = aes.backbone
    with torch.no_grad():
        px = bb.processor(images=[Image.fromarray(i.permute(1, 2, 0).numpy()) for i in imgs], return_tensors="pt")["pixel_values"]
        emb = bb.model.get_image_features(pixel_values=px)
        emb = emb if isinstance(emb, torch.Tensor) else emb.pooler_output
        expected = mlp.eval()(torch.nn.functional.normalize(emb, dim=-1)).squeeze(-1)
    assert torch.allclose(s, expected, atol=1e-5)
    x = pixels(imgs)
    d = aes.score_differentiable(x, [""] * 4)
    d.sum().backward()
    assert x.grad.abs().sum() > 0 and torch.allclose(d.detach(), s, atol=1e-4)  # same size: same numbers


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('DRPO_EVIL_MARK', '/nonexistent/x')}",))


def test_pickled_code_in_weights_is_refused(clip_dir, tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("DRPO_EVIL_MARK", str(mark))
    torch.save({"layers.0.weight": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil.pth: not loadable as plain weights .*weights_only=True"):
        build_reward({"name": "aesthetic", "options": {"path": str(tmp_path / "evil.pth"), "clip": str(clip_dir)}})
    assert not mark.exists()
    with pytest.raises(ModelNotFoundError, match="improved-aesthetic-predictor"):
        build_reward({"name": "aesthetic", "options": {"path": str(tmp_path / "missing.pth"), "clip": str(clip_dir)}})
    with pytest.raises(ModelNotFoundError, match="hf download nobody/PickScore_v9"):
        build_reward({"name": "pickscore", "options": {"path": "nobody/PickScore_v9"}})


# -- worker protocol ------------------------------------------------------------------------------

def test_worker_protocol_end_to_end_in_a_real_subprocess():
    reward = build_reward({"name": "worker", "options": {"scorer": "brightness", "batch_size": 2}})
    try:
        assert reward.handshake["name"] == "brightness" and reward.handshake["version"] == "1" and reward.handshake["ready"]
        imgs = images(5)
        expected = imgs.double().mean(dim=(1, 2, 3)) / 255
        assert torch.allclose(reward(imgs, PROMPTS + PROMPTS[:2]).double(), expected, atol=1e-6)
        assert reward._next_id == 3  # 5 images in batches of 2
        # a worker that dies between calls is restarted transparently (retries=1)
        pid = reward.handshake["pid"]
        reward._proc.kill()
        assert torch.allclose(reward(imgs, PROMPTS + PROMPTS[:2]).double(), expected, atol=1e-6)
        assert reward.handshake["pid"] != pid
    finally:
        reward.close()
    with pytest.raises(RewardError, match="worker was closed"):
        reward(imgs[:1], PROMPTS[:1])
    by_path = build_reward({"name": "worker", "options": {"scorer": "brightness", "image_transport": "path"}})
    assert torch.allclose(by_path(imgs, ["p"] * 5).double(), expected, atol=1e-6)
    by_path.close()


def _foreign_python() -> str | None:
    """A Python without drpo, torch and Pillow (the system one here), to run the worker in."""
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if Path(exe).is_file() and Path(exe).resolve() != Path(PY).resolve():
            probe = subprocess.run([exe, "-c", "import importlib.util as u; print(any(u.find_spec(m) for m in ('drpo', 'torch', 'PIL')))"],
                                   capture_output=True, text=True, cwd="/")
            if probe.returncode == 0 and probe.stdout.strip() == "False":
                return exe
    return None


@pytest.mark.skipif(_foreign_python() is None, reason="no Python without drpo/torch/Pillow on this machine")
def test_worker_runs_in_another_interpreter_and_scorer_errors_are_not_retried():
    reward = build_reward({"name": "worker", "options": {"scorer": "brightness", "python": _foreign_python(), "backoff": 0.01}})
    try:
        assert reward.handshake["ready"] and reward.handshake["pid"] > 0  # started without drpo or torch
        pid = reward.handshake["pid"]
        missing = r"the scorer failed: ModuleNotFoundError: No module named '(numpy|PIL)'"
        with pytest.raises(RewardError, match=r"reward brightness \(worker /.*python3\): " + missing):
            reward(images(2), ["p", "q"])
        assert reward.handshake["pid"] == pid and reward._proc.alive  # answered, not restarted
    finally:
        reward.close()


def test_worker_start_failures_are_clear():
    with pytest.raises(FileNotFoundError, match="conda env create -f envs/hpsv3.yaml"):
        build_reward({"name": "hpsv3", "options": {"python": "/nonexistent/python"}})
    # this environment has no hpsv3 package: the worker says so in its handshake
    fix = r"install it in its own env: conda env create -f envs/hpsv3.yaml"
    with pytest.raises(RewardError, match=r"reward hpsv3 \(worker .*\): cannot start: the hpsv3 scorer needs the 'hpsv3' package.*" + fix):
        build_reward({"name": "hpsv3"})
    with pytest.raises(RewardError, match="cannot start: the imagereward scorer needs the 'image-reward' package.*envs/imagereward.yaml"):
        build_reward({"name": "imagereward"})
    with pytest.raises(RewardError, match=r"cannot start: scorer brightness: unknown options \['checkpoint'\]"):
        build_reward({"name": "worker", "options": {"scorer": "brightness", "checkpoint": "x"}})
    with pytest.raises(RewardError, match="geneval scorer needs a GenEval checkout"):
        build_reward({"name": "geneval", "options": {"repo": "/nonexistent/geneval"}})


def test_worker_serve_answers_errors_and_keeps_serving(tmp_path):
    from drpo.rewards import worker
    from drpo.rewards.transport import png_base64

    img = images(2)
    (tmp_path / "a.png").write_bytes(base64.b64decode(png_base64(img[0])))
    lines = [
        json.dumps({"id": 1, "images": [str(tmp_path / "a.png"), "data:image/png;base64," + png_base64(img[1])], "prompts": ["x", "y"]}),
        "not json",
        json.dumps({"id": 3, "images": ["@@@"], "prompts": ["x"]}),
        json.dumps({"id": 4, "images": [png_base64(img[0])], "prompts": ["x", "y"]}),
        json.dumps({"id": 5, "images": [], "prompts": []}),
    ]
    out = io.StringIO()
    assert worker.serve("brightness", {}, stdin=io.StringIO("\n".join(lines) + "\n"), out=out) == 0
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert answers[0]["ready"] and answers[0]["protocol"] == worker.PROTOCOL
    assert answers[1]["id"] == 1 and answers[1]["scores"] == pytest.approx((img.double().mean(dim=(1, 2, 3)) / 255).tolist())
    assert answers[2]["id"] is None and "JSONDecodeError" in answers[2]["error"]
    assert answers[3]["id"] == 3 and "neither an existing file nor base64" in answers[3]["error"]
    assert answers[4]["id"] == 4 and "1 images, 2 prompts" in answers[4]["error"]
    assert answers[5] == {"id": 5, "scores": []}
    out = io.StringIO()
    assert worker.serve("nope", {}, stdin=io.StringIO(""), out=out) == 3
    assert "unknown scorer 'nope'" in json.loads(out.getvalue())["error"]


def test_worker_keeps_library_prints_off_the_protocol():
    folder = Path(R.__file__).parent
    code = (f"import sys; sys.path.insert(0, {str(folder)!r}); import worker; out = worker._protocol_stream(); "
            "print('chatty library'); out.write('protocol\\n'); out.flush()")
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "protocol\n" and "chatty library" in done.stderr


def test_geneval_rows_are_unwrapped_from_manifest_rows():
    from drpo.rewards.worker import geneval_row

    row = {"tag": "counting", "include": [{"class": "cat", "count": 2}]}
    assert geneval_row({"prompt_id": 3, "metadata": row}, "two cats") == {**row, "prompt": "two cats", "exclude": []}
    with pytest.raises(ValueError, match="not a GenEval row"):
        geneval_row({"prompt_id": 3}, "two cats")


# -- command black box ----------------------------------------------------------------------------

def _script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{PY}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


OK_SCRIPT = """
    import sys, json, base64, io, os
    for line in sys.stdin:
        row = json.loads(line)
        image = row["image"]
        data = open(image, "rb").read() if os.path.isfile(image) else base64.b64decode(image)
        assert data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
        print(json.dumps({"score": len(row["prompt"]) + row["metadata"].get("bonus", 0)}), flush=True)
"""


def test_command_reward_per_call_and_persistent(tmp_path):
    ok = _script(tmp_path, "ok.py", OK_SCRIPT)
    meta = [{"bonus": 100}, {}, {}]
    want = [len(PROMPTS[0]) + 100.0, len(PROMPTS[1]), len(PROMPTS[2])]
    for options in ({}, {"image_transport": "path"}, {"mode": "persistent", "batch_size": 2}):
        reward = build_reward({"name": "command", "options": {"command": [ok], **options}})
        assert reward(images(), PROMPTS, meta).tolist() == want
        reward.close()
    # persistent: one process for every batch; a "scores" line answers a whole batch
    counter = _script(tmp_path, "counter.py", """
        import sys, os
        n = 0
        for line in sys.stdin:
            n += 1
            print(f"{os.getpid()}.{n}" if n % 2 else '{"scores": [%d]}' % os.getpid(), flush=True)
    """)
    reward = build_reward({"name": "command", "options": {"command": [counter], "mode": "persistent", "batch_size": 2}})
    s = reward(images(5), ["p"] * 5)
    pid = reward._proc.proc.pid
    assert s.floor().tolist() == [float(pid)] * 5 and reward._proc.alive
    reward.close()
    assert build_reward({"name": "command", "options": {"command": f"{ok} --unused"}}).argv == [ok, "--unused"]


FAILURES = {
    # name: (script body, options, message)
    "crash.py": ("import sys; sys.stderr.write('model exploded\\n'); sys.exit(3)", {},
                 r"reward command \(.*crash.py\): exited with code 3; stderr: model exploded \(after 2 attempts\)"),
    "hang.py": ("import time; time.sleep(30)", {"retries": 0},
                r"reward command \(.*hang.py\): no answer within 1 s \(hung\?\); killed \(after 1 attempt\)"),
    "count.py": ("import sys\nfor l in list(sys.stdin)[:-1]: print(1.0)", {},
                 r"reward command \(.*count.py\): returned 2 scores for 3 images"),
    "nan.py": ("import sys\nfor l in sys.stdin: print('NaN')", {},
               r"reward command \(.*nan.py\): 3 of 3 scores are NaN or infinite"),
    "inf.py": ("import sys\nfor l in sys.stdin: print('{\"score\": Infinity}')", {},
               r"1 of 3 scores are NaN or infinite|3 of 3 scores are NaN or infinite"),
    "garbage.py": ("import sys\nfor l in sys.stdin: print('very good!')", {},
                   r"reward command \(.*garbage.py\): cannot parse its output: unparseable line 'very good!'"),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_command_reward_failures_are_named(tmp_path, name):
    body, options, message = FAILURES[name]
    reward = build_reward({"name": "command", "options": {"command": [_script(tmp_path, name, body)], "timeout": 1, "retries": 1, "backoff": 0.01, **options}})
    t0 = time.monotonic()
    with pytest.raises(RewardError, match=message):
        reward(images(), PROMPTS)
    assert time.monotonic() - t0 < 10


def test_command_reward_retries_a_crash_then_succeeds_and_persistent_recovers(tmp_path):
    flaky = _script(tmp_path, "flaky.py", f"""
        import sys, os
        mark = {str(tmp_path / "once")!r}
        if not os.path.exists(mark):
            open(mark, "w").close()
            sys.exit(1)
        for line in sys.stdin:
            print(0.5)
    """)
    assert build_reward({"name": "command", "options": {"command": [flaky], "backoff": 0.01}})(images(), PROMPTS).tolist() == [0.5] * 3
    # persistent: a process that hangs on its 2nd batch is killed and replaced for the retry
    hangs = _script(tmp_path, "hangs.py", f"""
        import sys, os, time
        mark = {str(tmp_path / "hung")!r}
        n = 0
        for line in sys.stdin:
            n += 1
            if n == 2 and not os.path.exists(mark):
                open(mark, "w").close()
                time.sleep(60)
            print(n, flush=True)
    """)
    reward = build_reward({"name": "command", "options": {"command": [hangs], "mode": "persistent", "batch_size": 1, "timeout": 1, "backoff": 0.01}})
    assert reward(images(2), ["p", "q"]).tolist() == [1.0, 1.0]  # 2nd image: a fresh process's 1st line
    reward.close()
    missing = build_reward({"name": "command", "options": {"command": [str(tmp_path / "nope")]}})
    with pytest.raises(RewardError, match="cannot run it"):
        missing(images(1), ["p"])


@pytest.mark.parametrize("mode", ["per_call", "persistent"])
def test_a_hung_wrapper_script_leaves_no_process_behind(tmp_path, mode):
    """A reward behind a wrapper (a shell script starting its model server, then waiting): on the
    timeout the whole process group goes, not only the wrapper (its server used to live on)."""
    pids = tmp_path / "pids"
    wrapper = tmp_path / "wrapper.sh"
    wrapper.write_text(f"#!/bin/sh\nsleep 120 &\necho $! >> {pids}\necho $$ >> {pids}\nwait\n")
    wrapper.chmod(0o755)
    reward = build_reward({"name": "command", "options": {"command": [str(wrapper)], "mode": mode, "timeout": 1,
                                                          "retries": 0}})
    with pytest.raises(RewardError, match="hung"):
        reward(images(1), ["p"])
    reward.close()
    started = [int(x) for x in pids.read_text().split()]
    assert len(started) == 2
    for _ in range(50):
        alive = []
        for pid in started:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"left running: {alive}"


# -- http black box --------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    plan: list = []
    calls = 0
    bodies: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        type(self).bodies.append(body)
        step = self.plan.pop(0) if self.plan else (200, None)
        if step[0] == "sleep":
            time.sleep(step[1])
            step = (200, None)
        status, payload = step
        if payload is None:
            payload = {"scores": [float(len(p)) for p in body["prompts"]]}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            if status in (301, 302, 307):
                self.send_header("Location", "http://example.com/elsewhere")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Handler.plan, _Handler.calls, _Handler.bodies = [], 0, []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/score"
    httpd.shutdown()
    httpd.server_close()


def test_http_reward_ok_sends_pngs_prompts_metadata_and_ignores_proxies(server, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a dead proxy: it must not be used
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    reward = build_reward({"name": "http", "options": {"url": server, "backoff": 0.01}})
    imgs = images(3, size=24)
    assert reward(imgs, PROMPTS, [{"k": 1}, {}, {"tag": "x"}]).tolist() == [float(len(p)) for p in PROMPTS]
    body = _Handler.bodies[-1]
    assert body["prompts"] == PROMPTS and body["metadata"] == [{"k": 1}, {}, {"tag": "x"}]
    decoded = Image.open(io.BytesIO(base64.b64decode(body["images"][2])))
    assert decoded.size == (24, 24) and (torch.from_numpy(np.array(decoded)).permute(2, 0, 1) == imgs[2]).all()


def test_http_reward_retries_5xx_then_succeeds(server):
    reward = build_reward({"name": "http", "options": {"url": server, "backoff": 0.01}})
    _Handler.plan = [(500, {"error": "busy"})]
    assert reward(images(), PROMPTS).tolist() == [float(len(p)) for p in PROMPTS] and _Handler.calls == 2
    _Handler.plan, _Handler.calls = [(503, b"overloaded")] * 5, 0
    with pytest.raises(RewardError, match=rf"reward http \({server}\): HTTP 503: overloaded \(after 4 attempts\)"):
        reward(images(), PROMPTS)
    assert _Handler.calls == 4


@pytest.mark.parametrize("reply,message", [
    ((200, {"scores": [1.0]}), r"returned 1 scores for 3 images"),
    ((200, b'{"scores": [1.0, NaN, 2.0]}'), r"1 of 3 scores are NaN or infinite"),
    ((200, b"<html>oops</html>"), r'expected JSON \{"scores": \[...\]\}, got .*oops'),
    ((200, {"scores": ["good", "bad", "ugly"]}), r"scores are not numbers"),
    ((404, b"no such route"), r"HTTP 404: no such route"),
    ((302, b""), r"HTTP 302 redirect to 'http://example.com/elsewhere' refused"),
])
def test_http_reward_bad_answers_fail_at_once(server, reply, message):
    reward = build_reward({"name": "http", "options": {"url": server, "backoff": 0.01}})
    _Handler.plan = [reply]
    with pytest.raises(RewardError, match=rf"reward http \({server}\): .*{message}"):
        reward(images(), PROMPTS)
    assert _Handler.calls == 1  # not retried


def test_http_reward_timeout_and_refused_connection(server):
    reward = build_reward({"name": "http", "options": {"url": server, "timeout": 0.5, "retries": 1, "backoff": 0.01}})
    _Handler.plan = [("sleep", 2), ("sleep", 2)]
    with pytest.raises(RewardError, match=r"no answer within 0.5 s \(timeout\) \(after 2 attempts\)"):
        reward(images(), PROMPTS)
    closed = build_reward({"name": "http", "options": {"url": "http://127.0.0.1:9/x", "retries": 1, "backoff": 0.01, "timeout": 2}})
    with pytest.raises(RewardError, match=r"reward http \(http://127.0.0.1:9/x\): cannot connect"):
        closed(images(), PROMPTS)
    with pytest.raises(ValueError, match="must be an http"):
        build_reward({"name": "http", "options": {"url": "file:///etc/passwd"}})


class _FlowGRPOHandler(BaseHTTPRequestHandler):
    """A reward server of flow_grpo's protocol (its GenEval server's answer keys): a pickled dict in,
    a pickled dict out. `answer` replaces the answer (a malicious pickle, a missing key)."""

    requests: list = []
    answer: bytes | None = None

    def do_POST(self):
        import pickle

        data = pickle.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(data)
        means = [float(np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64).mean()) for jpeg in data["images"]]
        reply = self.answer or pickle.dumps({
            "scores": np.array(means), "rewards": [m / 255 for m in means], "strict_rewards": [0.0] * len(means),
            "group_rewards": {}, "group_strict_rewards": {},
        })
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/drpo-pwned-by-reward-server",))


def test_http_reward_speaks_flow_grpos_reward_server_protocol():
    import pickle

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _FlowGRPOHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    _FlowGRPOHandler.requests, _FlowGRPOHandler.answer = [], None
    try:
        imgs = images(3, size=16)
        meta = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}]}, {}, {"tag": "colors"}]
        reward = build_reward({"name": "http", "options": {"url": url, "protocol": "flow_grpo", "retries": 0}})
        got = reward(imgs, PROMPTS, meta)
        sent = _FlowGRPOHandler.requests[-1]
        assert sent["prompts"] == PROMPTS and sent["meta_datas"] == meta and sent["only_strict"] is True
        assert all(jpeg[:2] == b"\xff\xd8" for jpeg in sent["images"])  # JPEG, as flow_grpo's clients send
        # the server's numpy array of JPEG means comes back as the scores (JPEG moves a mean by < 2 levels)
        assert got.tolist() == pytest.approx([float(i.float().mean()) for i in imgs], abs=2.0)
        by_key = build_reward({"name": "http", "options": {"url": url, "protocol": "flow_grpo", "score_key": "rewards"}})
        assert by_key(imgs, PROMPTS, meta).tolist() == pytest.approx((got / 255).tolist(), rel=1e-6)
        _FlowGRPOHandler.answer = pickle.dumps({"outputs": [1.0, 2.0, 3.0]})  # DeQA / UnifiedReward servers
        assert reward(imgs, PROMPTS, meta).tolist() == [1.0, 2.0, 3.0]
        _FlowGRPOHandler.answer = pickle.dumps({"result": [1.0, 2.0, 3.0]})
        with pytest.raises(RewardError, match=r"no 'scores' or 'outputs' \(it has \['result'\]\); set options.score_key"):
            reward(imgs, PROMPTS, meta)
        _FlowGRPOHandler.answer = pickle.dumps({"scores": _RunsCode()})
        with pytest.raises(RewardError, match=r"refused (posix|os)\.system"):
            reward(imgs, PROMPTS, meta)
        assert not Path("/tmp/drpo-pwned-by-reward-server").exists()
        with pytest.raises(ValueError, match="options.protocol must be one of"):
            build_reward({"name": "http", "options": {"url": url, "protocol": "grpc"}})
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- ensembles ------------------------------------------------------------------------------------

class Channel(Reward):
    """Mean of one colour channel: a real, cheap reward."""

    def __init__(self, c: int = 0, **kw):
        super().__init__(**kw)
        self.c = c

    def score(self, images, prompts, metadata):
        return images[:, self.c].float().mean(dim=(1, 2))


class Affine(Reward):
    """a·base + b under another name: the same ranking, another scale."""

    def __init__(self, base: Reward, a: float, b: float, name: str):
        super().__init__()
        self.base, self.a, self.b, self.name = base, a, b, name

    def score(self, images, prompts, metadata):
        return self.a * self.base(images, prompts, metadata) + self.b


def _named(reward: Reward, name: str) -> Reward:
    reward.name = name
    return reward


def test_ensemble_zscores_within_the_call_and_is_affine_invariant():
    from drpo.rewards.ensemble import Ensemble, zscore

    imgs = images(12, seed=3)
    prompts = ["p"] * 12
    r, g = _named(Channel(0), "r"), _named(Channel(1), "g")
    a = Ensemble([r, g], [2.0, 1.0])
    b = Ensemble([Affine(Channel(0), 37.0, -5.0, "r"), Affine(Channel(1), 0.01, 100.0, "g")], [4.0, 2.0])
    sa, sb = a(imgs, prompts), b(imgs, prompts)
    assert torch.equal(sa.argsort(), sb.argsort()) and torch.allclose(sa, sb, atol=1e-3)  # float32 scores of ~100
    assert a.weights == pytest.approx([2 / 3, 1 / 3]) and a.name == "r+g"
    raw_r, raw_g = imgs[:, 0].float().mean(dim=(1, 2)), imgs[:, 1].float().mean(dim=(1, 2))
    manual = 2 / 3 * (raw_r - raw_r.mean()) / raw_r.std(unbiased=False) + 1 / 3 * (raw_g - raw_g.mean()) / raw_g.std(unbiased=False)
    assert torch.allclose(sa, manual, atol=1e-5)
    assert torch.equal(a.last_components["r"], raw_r)
    assert torch.equal(zscore(torch.full((4,), 3.0)), torch.zeros(4))  # constant reward: zeros, not NaN
    # z-scoring is per call: 12 candidates scored in one call are one candidate set
    assert abs(float(Ensemble([r])(imgs, prompts).mean())) < 1e-6


def test_ensemble_specs_are_validated_before_anything_loads():
    with pytest.raises(ValueError, match=r"duplicate rewards \['brightness'\]"):
        build_reward_ensemble([{"name": "brightness"}, {"name": "brightness", "options": {"target": 0.2}}])
    with pytest.raises(ValueError, match="reward 'brightness' has weight -1.0; weights must be >= 0"):
        build_reward_ensemble([{"name": "brightness", "weight": -1}, {"name": "pickscore"}])  # pickscore never loads
    with pytest.raises(ValueError, match="sum to 0"):
        build_reward_ensemble([{"name": "brightness", "weight": 0}, {"name": "worker", "weight": 0}])
    with pytest.raises(ValueError, match="at least one reward spec"):
        build_reward_ensemble([])
    two = build_reward_ensemble([{"name": "brightness", "weight": 3}, {"name": "worker", "weight": 1, "options": {"scorer": "brightness"}}])
    try:
        s = two(images(6), ["p"] * 6)
        # both rewards measure the same thing: the z-scored sum is the z-score of brightness
        raw = images(6).double().mean(dim=(1, 2, 3))
        assert torch.allclose(s.double(), (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-4)
        assert two.weights == pytest.approx([0.75, 0.25])
    finally:
        two.close()
