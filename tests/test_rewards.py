"""Rewards: one call shape, tiny CLIP scorers, the worker protocol, and black boxes that fail loudly."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import torch

from drpo.rewards import Reward, RewardError, build_reward, build_reward_ensemble, register_reward

PROMPTS = ["a photo of a red circle", "a photo of a blue square", "a photo of two triangles"]


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from drpo.models.tiny import build_tiny_clip

    folder = tmp_path_factory.mktemp("clip")
    build_tiny_clip(folder)
    return folder


def test_pickscore_shapes_scaling_and_differentiable_path(clip_dir):
    reward = build_reward({"name": "pickscore", "options": {"path": str(clip_dir)}})
    scores = reward(images(), PROMPTS)
    assert scores.shape == (3,) and scores.dtype == torch.float32 and scores.abs().max() <= 1.0  # cosines
    logit = build_reward({"name": "pickscore", "options": {"path": str(clip_dir), "scale": "logit"}})(images(), PROMPTS)
    scale = float(reward.backbone.logit_scale)
    assert torch.allclose(logit, scale * scores, atol=1e-5)
    pixels = (images().float() / 127.5 - 1).requires_grad_(True)
    diff = reward.score_differentiable(pixels, PROMPTS)
    diff.sum().backward()
    assert pixels.grad.abs().sum() > 0
    # same image size: no resize, no crop → both paths see the same pixels up to uint8 rounding
    assert torch.allclose(diff.detach(), logit, atol=0.05 * scale)
    assert reward.differentiable and not build_reward({"name": "clip", "options": {"path": str(clip_dir)}}).differentiable


def test_aesthetic_loads_the_laion_mlp_keys_safely(clip_dir, tmp_path):
    from drpo.rewards.clip_based import AestheticMLP

    mlp = AestheticMLP(32)
    torch.save(mlp.state_dict(), tmp_path / "aes.pth")
    assert sorted(mlp.state_dict())[:2] == ["layers.0.bias", "layers.0.weight"]  # LAION's key names
    reward = build_reward({"name": "aesthetic", "options": {"path": str(tmp_path / "aes.pth"), "clip": str(clip_dir)}})
    s = reward(images(), PROMPTS)
    assert s.shape == (3,) and torch.isfinite(s).all()
    pixels = (images().float() / 127.5 - 1).requires_grad_(True)
    reward.score_differentiable(pixels, PROMPTS).sum().backward()
    assert pixels.grad.abs().sum() > 0
    torch.save({"evil": object()}, tmp_path / "pickle.pth")  # weights_only refuses arbitrary pickles
    with pytest.raises(Exception):
        build_reward({"name": "aesthetic", "options": {"path": str(tmp_path / "pickle.pth"), "clip": str(clip_dir)}})


def test_bad_input_and_unknown_names_are_clear():
    with pytest.raises(ValueError, match="not registered.*known rewards"):
        build_reward({"name": "hps9000"})
    reward = build_reward({"name": "worker", "options": {"scorer": "brightness"}})
    with pytest.raises(ValueError, match="uint8"):
        reward(images().float(), PROMPTS)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        reward(images(), PROMPTS[:2])


def test_worker_protocol_end_to_end_in_a_real_subprocess():
    reward = build_reward({"name": "worker", "options": {"scorer": "brightness", "batch_size": 2}})
    imgs = images(5)
    scores = reward(imgs, PROMPTS + PROMPTS[:2])
    assert torch.allclose(scores, imgs.float().mean(dim=(1, 2, 3)) / 255, atol=1e-4)
    reward.close()
    with pytest.raises(RewardError, match="worker is not running|exited"):
        reward(imgs[:1], PROMPTS[:1])
    with pytest.raises(FileNotFoundError, match="conda env create -f envs/hpsv3.yaml"):
        build_reward({"name": "hpsv3", "options": {"python": "/nonexistent/python"}})
    with pytest.raises(RewardError, match="needs the 'hpsv3' package"):
        build_reward({"name": "hpsv3", "options": {"start_timeout": 60}})  # this env has no hpsv3: a clear error


class Shifted(Reward):
    def __init__(self, base: Reward, a: float, b: float, name: str):
        super().__init__()
        self.base, self.a, self.b, self.name = base, a, b, name

    def score(self, images, prompts, metadata):
        return self.a * self.base(images, prompts, metadata) + self.b


class Channel(Reward):
    def __init__(self, c: int = 0, **kw):
        super().__init__(**kw)
        self.c = c

    def score(self, images, prompts, metadata):
        return images[:, self.c].float().mean(dim=(1, 2))


def test_ensemble_ranking_is_invariant_to_affine_rescaling_of_each_reward():
    from drpo.rewards.ensemble import Ensemble

    imgs = images(12, seed=3)
    prompts = ["p"] * 12
    a = Ensemble([Channel(0), Shifted(Channel(1), 1.0, 0.0, "g")], [2.0, 1.0])
    a.rewards[0].name = "r"
    b = Ensemble([Shifted(Channel(0), 37.0, -5.0, "r"), Shifted(Channel(1), 0.01, 100.0, "g")], [4.0, 2.0])
    sa, sb = a(imgs, prompts), b(imgs, prompts)
    assert torch.equal(sa.argsort(), sb.argsort()) and torch.allclose(sa, sb, atol=1e-4)
    assert a.weights == pytest.approx([2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="duplicate"):
        Ensemble([Channel(0), Channel(1)], [1, 1])
    with pytest.raises(ValueError, match=">= 0"):
        Ensemble([Channel(0), Shifted(Channel(1), 1, 0, "g")], [1, -1])


def test_registered_rewards_build_lazily_and_single_spec_ensembles_are_the_reward():
    @register_reward("channel_test")
    class ChannelTest(Channel):
        pass

    single = build_reward_ensemble([{"name": "channel_test", "options": {"c": 2}}])
    assert isinstance(single, ChannelTest) and single.c == 2


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_command_reward_ok_and_each_failure_is_named(tmp_path):
    ok = _script(tmp_path, "ok.py", """
        import sys, json
        for line in sys.stdin:
            row = json.loads(line)
            print(len(row["prompt"]) + (1 if row["image"] else 0))
    """)
    scores = build_reward({"name": "command", "options": {"command": [ok]}})(images(), PROMPTS)
    assert scores.tolist() == [len(p) + 1 for p in PROMPTS]
    cases = {
        "crash.py": ("import sys; sys.stderr.write('model exploded'); sys.exit(3)", r"exited with code 3; stderr: model exploded.*after 2 attempts"),
        "hang.py": ("import time; time.sleep(30)", r"no answer within 1 s"),
        "count.py": ("import sys\nfor l in list(sys.stdin)[:-1]: print(1.0)", r"returned 2 scores for 3 images"),
        "nan.py": ("import sys\nfor l in sys.stdin: print('NaN')", r"NaN"),
        "garbage.py": ("import sys\nfor l in sys.stdin: print('very good!')", r"cannot parse its output"),
    }
    for name, (body, message) in cases.items():
        reward = build_reward({"name": "command", "options": {"command": [_script(tmp_path, name, body)], "timeout": 1, "retries": 1, "backoff": 0.01}})
        with pytest.raises(RewardError, match=message):
            reward(images(), PROMPTS)


class _Handler(BaseHTTPRequestHandler):
    plan: list = []
    calls = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        status, payload = self.plan.pop(0) if self.plan else (200, {"scores": [float(len(p)) for p in body["prompts"]]})
        data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.plan, _Handler.calls = [], 0
    yield f"http://127.0.0.1:{httpd.server_address[1]}/score"
    httpd.shutdown()


def test_http_reward_retries_5xx_and_rejects_bad_answers(server):
    reward = build_reward({"name": "http", "options": {"url": server, "backoff": 0.01}})
    assert reward(images(), PROMPTS).tolist() == [float(len(p)) for p in PROMPTS]
    _Handler.plan = [(500, {"error": "busy"})]
    assert reward(images(), PROMPTS).tolist() == [float(len(p)) for p in PROMPTS] and _Handler.calls == 3
    _Handler.plan = [(200, {"scores": [1.0]})]
    with pytest.raises(RewardError, match="returned 1 scores for 3 images"):
        reward(images(), PROMPTS)
    _Handler.plan = [(200, b"<html>oops</html>")]
    with pytest.raises(RewardError, match="expected JSON"):
        reward(images(), PROMPTS)
    _Handler.plan = [(503, {})] * 5
    with pytest.raises(RewardError, match="HTTP 503.*after 4 attempts"):
        reward(images(), PROMPTS)
    closed = build_reward({"name": "http", "options": {"url": "http://127.0.0.1:9/x", "retries": 1, "backoff": 0.01, "timeout": 2}})
    with pytest.raises(RewardError, match="cannot connect"):
        closed(images(), PROMPTS)
