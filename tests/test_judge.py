"""Pairwise judge: parsing, pairing, position order, resume, summary, HTTP and Qwen3-VL backends."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drpo.eval.judge import (
    ORDER_SALT,
    WINNERS,
    Judge,
    Judgement,
    build_messages,
    combine_orders,
    image_pairs,
    judge_image_pairs,
    left_shown_first,
    parse_judgement,
    read_judgements,
    summarize,
    to_method,
)

# -- helpers --------------------------------------------------------------------------------------


def write_manifest(folder: Path, rows: list[tuple[int, int, str, int]], size: int = 32) -> Path:
    """A `drpo sample`-style folder: rows of (prompt_id, seed, prompt, grey level)."""
    lines = []
    for pid, seed, prompt, grey in rows:
        rel = f"seed_{seed}/images/{pid:06d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size, 3), grey, np.uint8)).save(folder / rel)
        lines.append({"prompt_id": pid, "seed": seed, "prompt": prompt, "image_path": rel,
                      "latent_seed": seed * 1_000_000 + pid, "metadata": {"tag": "t"}})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder / "manifest.jsonl"


class BrighterJudge:
    """Prefers the brighter image (a tie when equal); counts its calls."""

    name = "brighter"

    def __init__(self):
        self.calls = 0

    def judge(self, prompt, image_a, image_b, metadata=None):
        self.calls += 1
        a, b = np.asarray(image_a, float).mean(), np.asarray(image_b, float).mean()
        w = "A" if a > b else "B" if b > a else "tie"
        return Judgement(w, 0.9, "brighter", json.dumps({"winner": w}))


class FirstJudge:
    """Always picks the first image: pure position bias."""

    name = "first"

    def judge(self, prompt, image_a, image_b, metadata=None):
        return Judgement("A", 1.0, "first", '{"winner": "A"}')


@pytest.fixture
def two_methods(tmp_path):
    """Left images (grey 200) are brighter than right ones (grey 50) for 12 (prompt_id, seed) pairs."""
    keys = [(pid, seed) for pid in range(6) for seed in (42, 43)]
    a = write_manifest(tmp_path / "drpo", [(p, s, f"prompt {p}", 200) for p, s in keys])
    b = write_manifest(tmp_path / "base", [(p, s, f"prompt {p}", 50) for p, s in keys])
    return a, b


# -- parsing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, winner, confidence",
    [
        ('{"winner": "A", "confidence": 0.8, "reason": "sharper"}', "A", 0.8),
        ('```json\n{"winner": "B", "confidence": 0.7, "reason": "x"}\n```', "B", 0.7),
        ('Sure! Here is my verdict:\n{"winner": "tie", "confidence": 0.5, "reason": "same"}\nHope this helps.', "tie", 0.5),
        ('{"winner": "a", "confidence": 0.9, "reason": "x"}', "A", 0.9),
        ('{"winner": "Image B", "confidence": "0.6", "reason": "x"}', "B", 0.6),
        ('{"winner": "TIE", "confidence": 0.3}', "tie", 0.3),
        ("{'winner': 'B', 'confidence': 0.4, 'reason': 'cleaner',}", "B", 0.4),
        ('{"winner": "A", "confidence": 0.9,}', "A", 0.9),
        ('{winner: "B", confidence: 0.2}', "B", 0.2),
        ('{"winner": "A", "confidence": 1.7}', "A", 1.0),
        ('{"winner": "B", "confidence": -0.3}', "B", 0.0),
        ('{"winner": "A", "confidence": "high"}', "A", None),
        ('{"winner": "A", "confidence": NaN}', "A", None),
        ('{"winner": "A"}', "A", None),
        ('"winner": "B", "confidence": 0.65 (truncated', "B", 0.65),
        ("Image B is better because the cube is red.", "B", None),
        ("The first image follows the prompt more closely.", "A", None),
        ("A.", "A", None),
        ("A is clearly better.", "A", None),
        ("tie", "tie", None),
        ("Both are equally good; it's a tie.", "tie", None),
        ("A cat sits on a mat.", "invalid", None),
        ("asdf qwerty 12345", "invalid", None),
        ("", "invalid", None),
        ("Image A has a better cube but Image B has better light.", "invalid", None),
        ("{ not json at all", "invalid", None),
        ('{"winner": "A or B"}', "invalid", None),
    ],
)
def test_parse_judgement(raw, winner, confidence):
    j = parse_judgement(raw)
    assert isinstance(j, Judgement)
    assert j.winner == winner
    assert j.raw == raw
    if confidence is None:
        assert j.confidence is None
    else:
        assert j.confidence == pytest.approx(confidence)


def test_parse_keeps_reason_and_survives_garbage():
    assert parse_judgement('{"winner": "B", "confidence": 0.7, "reason": "fewer artifacts"}').reason == "fewer artifacts"
    rng = np.random.default_rng(0)
    for _ in range(200):  # random bytes and brace soup: never a crash, always a known winner
        text = bytes(rng.integers(0, 256, 40, dtype=np.uint8)).decode("latin-1") + "{'{\"}"[: rng.integers(0, 5)]
        assert parse_judgement(text).winner in WINNERS
    assert parse_judgement(None).winner == "invalid"


def test_message_layout():
    msgs = build_messages("a red cube")
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    parts = msgs[0]["content"]
    assert [p["type"] for p in parts] == ["image", "image", "text"]
    text = parts[2]["text"]
    first_line = text.splitlines()[0]
    assert "A" in first_line and "first" in first_line and "B" in first_line and "second" in first_line
    assert '"a red cube"' in text and '"winner"' in text and '"confidence"' in text and '"reason"' in text
    assert text.index("Prompt alignment") < text.index("Visual quality") < text.index("Overall appeal")


# -- order ----------------------------------------------------------------------------------------


def test_hashed_order_definition_determinism_and_balance():
    digest = hashlib.sha256(b"qwen3vl_pairwise_v1:7:42").hexdigest()
    assert left_shown_first(7, 42) == (int(digest[:8], 16) % 2 == 0)
    assert ORDER_SALT == "qwen3vl_pairwise_v1"
    keys = [(pid, seed) for pid in range(1000) for seed in (42, 43, 44)]
    first = [left_shown_first(p, s) for p, s in keys]
    assert first == [left_shown_first(p, s) for p, s in keys]
    assert 0.46 < np.mean(first) < 0.54
    other_salt = [left_shown_first(p, s, salt="another") for p, s in keys]
    assert other_salt != first


def test_method_mapping_and_both_orders():
    assert to_method("A", "left") == "left" and to_method("B", "left") == "right"
    assert to_method("A", "right") == "right" and to_method("B", "right") == "left"
    assert to_method("tie", "right") == "tie" and to_method("invalid", "left") == "invalid"
    with pytest.raises(ValueError, match="winner"):
        to_method("C", "left")
    assert combine_orders("left", "left") == "left"
    assert combine_orders("left", "right") == "tie"
    assert combine_orders("tie", "right") == "tie"
    assert combine_orders("invalid", "left") == "invalid"


# -- pairing --------------------------------------------------------------------------------------


def test_pairing_shuffle_maxpairs_shards(tmp_path):
    keys = [(pid, seed) for pid in range(10) for seed in (42, 43)]
    a = write_manifest(tmp_path / "m_a", [(p, s, f"p{p}", 100) for p, s in keys])
    b = write_manifest(tmp_path / "m_b", [(p, s, f"p{p}", 100) for p, s in keys + [(99, 42)]])
    pairs = image_pairs(a, b.parent)  # a file or its folder
    assert len(pairs) == 20  # (99, 42) exists only in b
    assert [p.key for p in pairs] == [p.key for p in image_pairs(a, b)]  # deterministic
    assert [p.key for p in pairs] != sorted(p.key for p in pairs)  # shuffled
    assert [p.key for p in pairs] != [p.key for p in image_pairs(a, b, shuffle_seed=7)]
    p0 = pairs[0]
    assert Path(p0.left_image) == (tmp_path / "m_a" / f"seed_{p0.seed}/images/{p0.prompt_id:06d}.png").resolve()
    assert Path(p0.right_image).is_file() and (p0.left_label, p0.right_label) == ("m_a", "m_b")
    assert p0.metadata == {"tag": "t"} and p0.prompt == f"p{p0.prompt_id}"
    first7 = [p.key for p in image_pairs(a, b, max_pairs=7)]
    assert first7 == [p.key for p in pairs[:7]]
    shards = [[p.key for p in image_pairs(a, b, max_pairs=7, shard=(i, 3))] for i in range(3)]
    assert sorted(k for s in shards for k in s) == sorted(first7) and sum(map(len, shards)) == 7
    assert [p.key for p in image_pairs(a, b, max_pairs=7, shard="1/3")] == shards[1]
    with pytest.raises(ValueError, match="0 <= I < N"):
        image_pairs(a, b, shard=(3, 3))


def test_pairing_prompt_mismatch_is_a_clear_error(tmp_path):
    a = write_manifest(tmp_path / "x", [(0, 42, "a red cube", 10), (1, 42, "a blue ball", 10)])
    b = write_manifest(tmp_path / "y", [(0, 42, "a red cube", 10), (1, 42, "a green ball", 10)])
    with pytest.raises(ValueError) as err:
        image_pairs(a, b)
    msg = str(err.value)
    assert str(a) in msg and str(b) in msg and "prompt_id 1" in msg and "a green ball" in msg


def test_pairing_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        image_pairs(tmp_path / "nope", tmp_path / "nada")


# -- summary --------------------------------------------------------------------------------------


def test_summary_exact_numbers_and_ci():
    recs = [{"winner": w, "left_label": "drpo", "right_label": "base"}
            for w in ["left"] * 5 + ["right"] * 2 + ["tie"] * 2 + ["invalid"]]
    s = summarize(recs, n_boot=2000, seed=0)
    assert (s.n, s.valid, s.wins, s.losses, s.ties, s.invalid) == (10, 9, 5, 2, 2, 1)
    assert s.win_rate_excluding_ties == pytest.approx(5 / 7)
    assert s.preference_share == pytest.approx(6 / 9)
    assert s.order_consistency is None and (s.left_label, s.right_label) == ("drpo", "base")
    for key in ("win_rate_excluding_ties", "preference_share"):
        lo, hi = getattr(s, key + "_ci95")
        assert 0.0 <= lo < getattr(s, key) < hi <= 1.0
    assert s == summarize(recs, n_boot=2000, seed=0)  # seeded
    big = summarize(recs * 20, n_boot=2000, seed=0)  # same rates, 20x the pairs: narrower interval
    assert big.preference_share == pytest.approx(6 / 9)
    width = lambda x: x.preference_share_ci95[1] - x.preference_share_ci95[0]  # noqa: E731
    assert width(big) < 0.5 * width(s)


def test_summary_order_consistency_and_edge_cases():
    recs = [{"winner": "left", "order": "both", "consistent": True}] * 3 + [
        {"winner": "tie", "order": "both", "consistent": False},
        {"winner": "invalid", "order": "both", "consistent": None},
    ]
    s = summarize(recs, n_boot=100)
    assert s.order_consistency == pytest.approx(3 / 4) and s.n_both_orders == 4
    assert s.win_rate_excluding_ties == 1.0 and s.preference_share == pytest.approx(3.5 / 4)
    only_ties = summarize([{"winner": "tie"}] * 3, n_boot=50)
    assert only_ties.win_rate_excluding_ties is None and only_ties.preference_share == 0.5
    assert only_ties.win_rate_excluding_ties_ci95 is None
    empty = summarize([], n_boot=10)
    assert empty.n == 0 and empty.preference_share is None
    with pytest.raises(ValueError, match="winner"):
        summarize([{"winner": "A"}])


# -- running, resume ------------------------------------------------------------------------------


def test_judge_pairs_maps_winners_to_methods(two_methods, tmp_path):
    a, b = two_methods
    pairs = image_pairs(a, b)
    judge = BrighterJudge()
    assert isinstance(judge, Judge)
    recs = judge_image_pairs(pairs, judge, tmp_path / "j.jsonl", progress=False)
    assert [r["winner"] for r in recs] == ["left"] * 12 and {r["winner_label"] for r in recs} == {"drpo"}
    firsts = [r["judgements"][0]["first"] for r in recs]
    assert firsts == ["left" if left_shown_first(p.prompt_id, p.seed) else "right" for p in pairs]
    assert {"A", "B"} == {r["judgements"][0]["winner"] for r in recs}  # both positions occurred
    assert all(r["judgements"][0]["raw"] for r in recs)
    s = summarize(read_judgements(tmp_path / "j.jsonl"), n_boot=100)
    assert (s.wins, s.losses, s.preference_share) == (12, 0, 1.0)


def test_order_both_cancels_position_bias(two_methods, tmp_path):
    a, b = two_methods
    pairs = image_pairs(a, b)
    recs = judge_image_pairs(pairs, FirstJudge(), tmp_path / "both.jsonl", order="both", progress=False)
    assert all(len(r["judgements"]) == 2 and r["winner"] == "tie" and r["consistent"] is False for r in recs)
    assert [j["first"] for j in recs[0]["judgements"]] == ["left", "right"]
    assert summarize(recs, n_boot=10).order_consistency == 0.0
    hashed = judge_image_pairs(pairs, FirstJudge(), tmp_path / "hashed.jsonl", progress=False)
    s = summarize(hashed, n_boot=10)  # the biased judge's verdicts follow the hash
    assert s.wins == sum(left_shown_first(p.prompt_id, p.seed) for p in pairs) and s.ties == 0
    good = judge_image_pairs(pairs, BrighterJudge(), tmp_path / "good.jsonl", order="both", progress=False)
    assert summarize(good, n_boot=10).order_consistency == 1.0 and all(r["winner"] == "left" for r in good)


def test_resume_skips_finished_pairs_and_ignores_partial_line(two_methods, tmp_path):
    a, b = two_methods
    pairs = image_pairs(a, b)
    out = tmp_path / "j.jsonl"
    first = BrighterJudge()
    judge_image_pairs(pairs[:5], first, out, progress=False)
    assert first.calls == 5
    with open(out, "a") as fh:  # a writer killed mid-line
        fh.write('{"prompt_id": 3, "seed": 4')
    assert len(read_judgements(out)) == 5
    second = BrighterJudge()
    recs = judge_image_pairs(pairs, second, out, progress=False)
    assert second.calls == 7 and len(recs) == 12
    lines = out.read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line) for line in lines)
    assert sorted((r["prompt_id"], r["seed"]) for r in read_judgements(out)) == sorted(p.key for p in pairs)
    third = BrighterJudge()
    judge_image_pairs(pairs, third, out, progress=False)
    assert third.calls == 0
    with pytest.raises(ValueError, match="order=hashed"):
        judge_image_pairs(pairs, BrighterJudge(), out, order="both", progress=False)


def test_merge_of_shards_equals_unsharded(two_methods, tmp_path):
    a, b = two_methods
    whole = judge_image_pairs(image_pairs(a, b), FirstJudge(), tmp_path / "all.jsonl", progress=False)
    for i in range(3):
        judge_image_pairs(image_pairs(a, b, shard=(i, 3)), FirstJudge(), tmp_path / f"s{i}.jsonl", progress=False)
    merged = read_judgements(*(tmp_path / f"s{i}.jsonl" for i in range(3)))
    assert len(merged) == 12
    assert summarize(merged, n_boot=200) == summarize(whole, n_boot=200)


# -- OpenAI-compatible HTTP backend ---------------------------------------------------------------


def _decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


class ChatServer:
    """A local OpenAI-style /v1/chat/completions server; answers for the brighter image.
    `fail_first` requests are answered with HTTP 500 first."""

    def __init__(self, fail_first: int = 0, content: str | None = None):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.fail_left = fail_first
        self.content = content
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                outer.headers.append(dict(self.headers))
                if outer.fail_left > 0:
                    outer.fail_left -= 1
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"overloaded")
                    return
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                parts = body["messages"][0]["content"]
                ia, ib = (_decode_data_url(p["image_url"]["url"]) for p in parts[:2])
                a, b = np.asarray(ia, float).mean(), np.asarray(ib, float).mean()
                w = "A" if a > b else "B" if b > a else "tie"
                text = outer.content or f'```json\n{{"winner": "{w}", "confidence": 0.75, "reason": "brighter"}}\n```'
                reply = {"id": "x", "object": "chat.completion",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _grey(level: int, size: int = 16) -> Image.Image:
    return Image.fromarray(np.full((size, size, 3), level, np.uint8))


def test_openai_backend_request_and_reply(monkeypatch):
    from drpo.eval.judge_backends import OpenAIChatJudge

    monkeypatch.setenv("DRPO_TEST_KEY", "sekret")
    with ChatServer() as srv:
        judge = OpenAIChatJudge(srv.base_url, "Qwen/Qwen3-VL-8B-Instruct", api_key_env="DRPO_TEST_KEY", retries=0)
        j = judge.judge("a red cube", _grey(220), _grey(30))
        assert (j.winner, j.confidence, j.reason) == ("A", 0.75, "brighter")
        assert judge.judge("a red cube", _grey(30), _grey(220)).winner == "B"
    req = srv.requests[0]
    assert req["path"] == "/v1/chat/completions"
    body = req["body"]
    assert body["model"] == "Qwen/Qwen3-VL-8B-Instruct" and body["temperature"] == 0 and body["max_tokens"] == 96
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert np.asarray(_decode_data_url(parts[0]["image_url"]["url"]))[0, 0, 0] == 220
    assert '"a red cube"' in parts[2]["text"]
    assert srv.headers[0]["Authorization"] == "Bearer sekret"


def test_openai_backend_retries_500_then_succeeds():
    from drpo.eval.judge_backends import OpenAIChatJudge

    with ChatServer(fail_first=1) as srv:
        judge = OpenAIChatJudge(srv.base_url, "m", retries=3, backoff=0.01)
        assert judge.judge("p", _grey(10), _grey(200)).winner == "B"
        assert len(srv.requests) == 2
    with ChatServer(fail_first=10) as srv:
        judge = OpenAIChatJudge(srv.base_url, "m", retries=2, backoff=0.01)
        with pytest.raises(RuntimeError, match="failed 3 times.*HTTP 500"):
            judge.judge("p", _grey(10), _grey(200))
        assert len(srv.requests) == 3
    with ChatServer() as srv:  # a 404 (wrong URL) is not retried
        judge = OpenAIChatJudge(srv.base_url.replace("/v1", "/v2"), "m", retries=3, backoff=0.01)
        with pytest.raises(RuntimeError, match="HTTP 404"):
            judge.judge("p", _grey(10), _grey(200))
        assert len(srv.requests) == 1


def test_openai_backend_unusable_reply_is_invalid():
    from drpo.eval.judge_backends import OpenAIChatJudge

    with ChatServer(content="I cannot compare these images.") as srv:
        j = OpenAIChatJudge(srv.base_url, "m", retries=0).judge("p", _grey(10), _grey(200))
    assert j.winner == "invalid" and j.raw == "I cannot compare these images."


def test_cli_openai_end_to_end(two_methods, tmp_path, capsys):
    from drpo.cli import main

    a, b = two_methods
    out, summary = tmp_path / "j.jsonl", tmp_path / "s.json"
    with ChatServer() as srv:
        args = ["judge", "--a", str(a), "--b", str(b.parent), "--backend", "openai", "--base-url", srv.base_url,
                "--model", "qwen", "--out", str(out), "--summary", str(summary), "--max-pairs", "8",
                "--shard", "0/2", "--no-progress", "--n-boot", "100"]
        assert main(args) == 0
        assert len(srv.requests) == 4
        assert main(args) == 0 and len(srv.requests) == 4  # resumed: nothing left to do
    s = json.loads(summary.read_text())
    assert (s["n"], s["wins"], s["losses"], s["left_label"], s["shard"]) == (4, 4, 0, "drpo", "0/2")
    assert main(["judge", "--merge", str(out), "--summary", str(tmp_path / "m.json"), "--n-boot", "100"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["wins"] == 4
    assert "preference share 100.0%" in capsys.readouterr().out
    assert main(["judge", "--a", str(a), "--b", str(b), "--backend", "openai", "--out", str(out)]) == 2  # no --base-url


def test_cli_world_backend(tmp_path):
    pytest.importorskip("drpo.world.judge")
    from drpo.cli import main
    from drpo.world.grammar import generate_prompts
    from drpo.world.render import render

    rows = generate_prompts(4, seed=5, tags=["single_object"])
    for name, good in (("rendered", True), ("blank", False)):
        folder = tmp_path / name
        lines = []
        for row in rows:
            rel = f"seed_42/images/{row['prompt_id']:06d}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            img = render(row, np.random.default_rng(row["prompt_id"]), size=32) if good else np.full((32, 32, 3), 255, np.uint8)
            Image.fromarray(img).save(folder / rel)
            meta = {k: v for k, v in row.items() if k not in ("prompt", "prompt_id")}
            lines.append({"prompt_id": row["prompt_id"], "seed": 42, "prompt": row["prompt"], "image_path": rel, "metadata": meta})
        (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out, summary = tmp_path / "w.jsonl", tmp_path / "w.json"
    assert main(["judge", "--a", str(tmp_path / "rendered"), "--b", str(tmp_path / "blank"), "--backend", "world",
                 "--out", str(out), "--summary", str(summary), "--no-progress", "--n-boot", "50"]) == 0
    s = json.loads(summary.read_text())
    assert (s["n"], s["wins"], s["losses"], s["invalid"]) == (4, 4, 0, 0)


# -- transformers backend on a tiny Qwen3-VL ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from drpo.eval.judge_backends import build_tiny_qwen3vl

    return build_tiny_qwen3vl(tmp_path_factory.mktemp("qwen") / "tiny", seed=0)


def test_qwen_backend_tiny_model(tiny_qwen):
    import torch

    from drpo.eval.judge_backends import QwenVLJudge

    torch.set_num_threads(1)
    judge = QwenVLJudge(tiny_qwen, device="cpu", dtype="float32", max_new_tokens=6)
    assert judge.attn_implementation == "sdpa" and judge.generation_config.do_sample is False
    proc = judge.processor
    assert type(proc).__name__ == "Qwen3VLProcessor" and proc.video_processor is not None
    rng = np.random.default_rng(0)
    ia = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    ib = _grey(200, 48)
    text = proc.apply_chat_template(build_messages("a red cube"), tokenize=False, add_generation_prompt=True)
    assert text.count("<|vision_start|>") == 2 and text.endswith("assistant\n")
    inputs = proc(text=[text], images=[ia, ib], return_tensors="pt")
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 64x64 -> 4x4 patches of 16 -> 2x2 merged tokens; 48x48 -> 3x3 -> rounded to 32x32 or 64x64 grid
    n_tokens = int((inputs["input_ids"] == image_id).sum())
    assert n_tokens == int(inputs["image_grid_thw"].prod(-1).sum()) // 4 and n_tokens >= 2
    j1 = judge.judge("a red cube", ia, ib)
    j2 = judge.judge("a red cube", ia, ib)
    assert isinstance(j1, Judgement) and j1.winner in WINNERS
    assert j1 == j2 and isinstance(j1.raw, str)  # greedy decoding is deterministic


def test_qwen_backend_missing_model_names_the_id(monkeypatch, tmp_path):
    from drpo.eval.judge_backends import QwenVLJudge
    from drpo.hub import ModelNotFoundError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError, match="nobody/Qwen3-VL-404"):
        QwenVLJudge("nobody/Qwen3-VL-404")
