"""Prompt sets (sha256-checked copies packaged in drpo/data/public/), disjointness, Pick-a-Pic pair building.

tests/test_packaged_prompts.py checks the packaged files themselves and that the workflow needs nothing else."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import threading
from pathlib import Path

import pytest

from drpo.cli import main as drpo_main
from drpo.data import prompts as P
from drpo.data.pickapic import build_pickapic_pairs


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name,count", [("partiprompts", 1632), ("geneval", 553), ("pickapic_test_2048", 2048),
                                        ("geneval_object_names", 80)])
def test_prepare_public_set_from_packaged_copy(tmp_path, name, count):
    out = P.prepare_prompt_set(name, tmp_path / f"{name}.jsonl")
    rows = read_rows(out)
    assert len(rows) == count
    assert [r["prompt_id"] for r in rows] == list(range(count))
    assert all(r["prompt"] and r["prompt"] == r["prompt"].strip() for r in rows)
    side = P.read_sidecar(out)
    src = P.PROMPT_SETS[name]
    assert side["source_sha256"] == src.sha256 == P.sha256_file(P.packaged_path(name))
    assert side["origin"] == f"package:drpo/data/public/{src.filename}"
    assert side["source_rows"] == count and side["duplicates_dropped"] == 0 and side["excluded_dropped"] == []
    assert side["verified"] is True and side["count"] == count and side["source_url"].startswith("https://")
    assert side["output_sha256"] == P.sha256_file(out)


def test_metadata_kept(tmp_path):
    parti = read_rows(P.prepare_prompt_set("partiprompts", tmp_path / "parti.jsonl"))
    assert parti[0] == {"prompt_id": 0, "prompt": "bond", "category": "Abstract", "challenge": "Basic"}
    assert len({r["category"] for r in parti}) == 12 and len({r["challenge"] for r in parti}) == 11
    geneval = read_rows(P.prepare_prompt_set("geneval", tmp_path / "geneval.jsonl"))
    assert geneval[0] == {"prompt_id": 0, "tag": "single_object", "include": [{"class": "bench", "count": 1}],
                          "prompt": "a photo of a bench"}
    assert {r["tag"] for r in geneval} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert sum("exclude" in r for r in geneval) == 80
    pick = read_rows(P.prepare_prompt_set("pickapic_test_2048", tmp_path / "pick.jsonl"))
    first = P.packaged_path("pickapic_test_2048").read_text().splitlines()[0]
    assert pick[0]["prompt"] == first.strip() and set(pick[0]) == {"prompt_id", "prompt"}


def test_parti_prompts_with_quotes_parse_verbatim(tmp_path):
    rows = read_rows(P.prepare_prompt_set("partiprompts", tmp_path / "parti.jsonl"))
    # Default CSV quoting would strip these quotes: the field *starts* with one.
    assert rows[1560]["prompt"] == ('"G I G G L E" painted in thick colorful lettering as graffiti on a faded '
                                    'red brick wall with a splotch of exploding white paint.')
    assert (rows[1560]["category"], rows[1560]["challenge"]) == ("Illustrations", "Writing & Symbols")
    assert 'The words "Fly an airplane" are written on the wall.' in rows[276]["prompt"]
    assert sum('"' in r["prompt"] for r in rows) == 22
    assert not any("\t" in r["prompt"] for r in rows)


def test_tampered_copy_fails_with_clear_error(tmp_path):
    local = tmp_path / "copy"
    local.mkdir()
    shutil.copy(P.packaged_path("partiprompts"), local / "PartiPrompts.tsv")
    data = (local / "PartiPrompts.tsv").read_text().replace("bond", "bomb", 1)
    (local / "PartiPrompts.tsv").write_text(data)
    actual = P.sha256_file(local / "PartiPrompts.tsv")
    with pytest.raises(P.ChecksumError) as err:
        P.prepare_prompt_set("partiprompts", tmp_path / "out.jsonl", local_dir=local)
    msg = str(err.value)
    assert str(local / "PartiPrompts.tsv") in msg and P.PROMPT_SETS["partiprompts"].sha256 in msg and actual in msg
    assert not (tmp_path / "out.jsonl").exists() and not P.sidecar_path(tmp_path / "out.jsonl").exists()
    code = drpo_main(["prompts", "prepare", "partiprompts", "--out", str(tmp_path / "o.jsonl"), "--local-dir", str(local)])
    assert code == 2


def test_missing_copy_without_download_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"PartiPrompts\.tsv not found.*--download"):
        P.prepare_prompt_set("partiprompts", tmp_path / "o.jsonl", local_dir=tmp_path)
    with pytest.raises(KeyError, match="unknown prompt set 'parti'"):
        P.prepare_prompt_set("parti", tmp_path / "o.jsonl", local_dir=tmp_path)


def test_download_path_verifies_sha256(tmp_path, monkeypatch):
    """The download branch against a local HTTP server (never the public source in tests)."""
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(P.packaged_path("geneval"), served / "good.jsonl")
    (served / "bad.jsonl").write_text((served / "good.jsonl").read_text().replace("bench", "bunch", 1))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        src = P.PROMPT_SETS["geneval"]  # as a set without a packaged copy: only then is it downloaded
        src = P.PromptSource(**{**src.__dict__, "packaged": False})
        monkeypatch.setitem(P.PROMPT_SETS, "geneval", P.PromptSource(**{**src.__dict__, "url": f"{base}/good.jsonl"}))
        out = P.prepare_prompt_set("geneval", tmp_path / "dl" / "geneval.jsonl", allow_download=True)
        assert len(read_rows(out)) == 553 and P.read_sidecar(out)["origin"] == f"download:{base}/good.jsonl"
        monkeypatch.setitem(P.PROMPT_SETS, "geneval", P.PromptSource(**{**src.__dict__, "url": f"{base}/bad.jsonl"}))
        with pytest.raises(P.ChecksumError, match="expected 5c48e08"):
            P.prepare_prompt_set("geneval", tmp_path / "dl2" / "geneval.jsonl", allow_download=True)
        assert not list((tmp_path / "dl2").rglob("*.jsonl")), "a bad download must not land on disk"
    finally:
        server.shutdown()


def test_check_disjoint_names_overlaps(tmp_path):
    test = [{"prompt": "a photo of a bench"}, {"prompt": "A red  Cube"}]
    P.check_disjoint(["a photo of a cow", "a blue cube"], test)
    with pytest.raises(ValueError) as err:
        P.check_disjoint([" A  Photo of a\tBENCH ", "a cow", "a red cube"], test, train_name="train.txt", test_name="test.jsonl")
    msg = str(err.value)
    assert msg.startswith("2 prompt(s) are in both train.txt and test.jsonl")
    assert "'a photo of a bench'" in msg and "'a red cube'" in msg and "cow" not in msg

    (tmp_path / "train.txt").write_text("a cow\nA PHOTO of a bench\n")
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
    assert drpo_main(["prompts", "check-disjoint", str(tmp_path / "train.txt"), str(tmp_path / "test.jsonl")]) == 2
    (tmp_path / "train.txt").write_text("a cow\n")
    assert drpo_main(["prompts", "check-disjoint", str(tmp_path / "train.txt"), str(tmp_path / "test.jsonl")]) == 0


def test_prepare_own_file_with_exclusion(tmp_path):
    (tmp_path / "train.txt").write_text("a cow\n\n  a horse  \n")
    (tmp_path / "test.txt").write_text("a horse\n")
    (tmp_path / "other.txt").write_text("a dog\n")
    with pytest.raises(ValueError, match="'a horse'"):
        P.prepare_prompt_file(tmp_path / "train.txt", tmp_path / "t.jsonl", exclude=[tmp_path / "test.txt"])
    code = drpo_main(["prompts", "prepare", "file", "--path", str(tmp_path / "train.txt"), "--out",
                      str(tmp_path / "t.jsonl"), "--exclude", str(tmp_path / "other.txt")])
    assert code == 0
    assert read_rows(tmp_path / "t.jsonl") == [{"prompt_id": 0, "prompt": "a cow"}, {"prompt_id": 1, "prompt": "a horse"}]
    side = P.read_sidecar(tmp_path / "t.jsonl")
    assert side["verified"] is False and side["source_sha256"] == P.sha256_file(tmp_path / "train.txt")


# -- Pick-a-Pic pairs ----------------------------------------------------------------------------


def png(color: tuple[int, int, int], size: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


RED, BLUE, GREEN, GREY = png((255, 0, 0)), png((0, 0, 255)), png((0, 255, 0)), png((128, 128, 128))


def write_parquet(path: Path, rows: list[tuple]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*rows))
    table = pa.table({
        "caption": pa.array(cols[0], pa.string()),
        "jpg_0": pa.array(cols[1], pa.binary()),
        "jpg_1": pa.array(cols[2], pa.binary()),
        "label_0": pa.array(cols[3], pa.float64()),
        "label_1": pa.array(cols[4], pa.float64()),
        "best_image_uid": pa.array(["x"] * len(rows)),  # extra v2 columns are ignored
    })
    pq.write_table(table, path)
    return path


ROWS = [
    ("a red apple", RED, BLUE, 1.0, 0.0),       # jpg_0 preferred
    ("a blue bird", RED, BLUE, 0.0, 1.0),       # jpg_1 preferred
    ("a tie", GREEN, GREY, 0.5, 0.5),           # no preference
    ("A  Test Prompt", GREY, GREEN, 1.0, 0.0),  # in the test list
    ("broken image", b"not an image", BLUE, 1.0, 0.0),
    ("", RED, BLUE, 1.0, 0.0),
]


def test_pickapic_pairs_labels_ties_exclusion(tmp_path):
    f1 = write_parquet(tmp_path / "a.parquet", ROWS[:3])
    f2 = write_parquet(tmp_path / "b.parquet", ROWS[3:] + [("a green leaf", GREEN, GREY, 0.0, 1.0)])
    out = tmp_path / "pairs"
    stats = build_pickapic_pairs([f1, f2], out, exclude_prompts=["a test prompt"])
    assert (stats.rows_read, stats.pairs, stats.ties, stats.excluded, stats.bad_images, stats.empty_captions) == (7, 3, 1, 1, 1, 1)
    rows = read_rows(out / "pairs.jsonl")
    assert [r["prompt"] for r in rows] == ["a red apple", "a blue bird", "a green leaf"]
    expected = [(RED, BLUE), (BLUE, RED), (GREY, GREEN)]
    for r, (chosen, rejected) in zip(rows, expected):
        assert (out / r["chosen"]).read_bytes() == chosen and (out / r["rejected"]).read_bytes() == rejected
        assert r["chosen"].startswith("images/") and r["chosen"].endswith(".png")
    assert (rows[2]["source"], rows[2]["source_row"]) == ("b.parquet", 3)
    meta = json.loads((out / "pairs.meta.json").read_text())
    assert meta["stats"]["pairs"] == 3 and meta["options"]["ties"] == "drop"

    from drpo.data.pairs import load_pairs  # the trainer's reader accepts the output

    ds = load_pairs(out / "pairs.jsonl")
    img = ds.images(1, "chosen", 4)
    assert img.shape == (1, 3, 4, 4) and float(img[0, 2].min()) == 1.0 and float(img[0, 0].max()) == -1.0  # blue

    stats = build_pickapic_pairs([f1, f2], out, max_pairs=1)  # a rebuild replaces the old output
    assert stats.pairs == 1 and len(read_rows(out / "pairs.jsonl")) == 1
    assert len([p for p in (out / "images").iterdir() if not p.name.startswith(".")]) == 2
    with pytest.raises(ValueError, match=r"a\.parquet: row 2: tie"):
        build_pickapic_pairs([f1], tmp_path / "strict", ties="error")


def test_pickapic_cli_and_schema_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = write_parquet(tmp_path / "a.parquet", ROWS)
    (tmp_path / "test.txt").write_text("a red apple\n")
    code = drpo_main(["prompts", "pickapic-pairs", "--parquet", str(f), "--out", str(tmp_path / "o"),
                      "--exclude-prompts", str(tmp_path / "test.txt")])
    assert code == 0
    assert [r["prompt"] for r in read_rows(tmp_path / "o" / "pairs.jsonl")] == ["a blue bird", "A  Test Prompt"]
    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [RED]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: lacks column\(s\) \['jpg_1', 'label_0', 'label_1'\]"):
        build_pickapic_pairs([tmp_path / "bad.parquet"], tmp_path / "o2")
