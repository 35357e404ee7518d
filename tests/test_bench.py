"""`drpo bench drift` writes its numbers and figure; memory is measured on CPU too (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory needs Linux /proc")
def test_bench_drift_records_peak_memory_and_batching(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([str(Path(sys.executable).with_name("drpo")), "bench", "drift", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "drift.json").read_text())
    assert (out / "drift.png").stat().st_size > 10_000
    assert {r["vary"] for r in result["rows"]} == {"n", "p", "m", "d", "radii", "b"}
    by_d = {r["d"]: r for r in result["rows"] if r["vary"] == "d"}
    # D = 81 920 with N = 24, P = M = 8: the inputs alone are 12.5 MiB of float32 targets, copied and scaled
    assert by_d[81920]["peak_mib"] > 12 > by_d[64]["peak_mib"] >= 0
    assert [b["n"] for b in result["batched_vs_separate"]] == [24, 96, 384]
    assert all(b["batched_s"] > 0 and b["separate_s"] > 0 for b in result["batched_vs_separate"])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="CPU peak memory needs Linux /proc")
def test_bench_memory_measures_a_full_size_update_with_and_without_checkpointing(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([str(Path(sys.executable).with_name("drpo")), "bench", "memory", "--resolution", "128", "--candidates", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "memory.json").read_text())
    assert result["resolution"] == 128 and result["candidates"] == 3 and result["device"] == "cpu"
    plain, ckpt = (r["peak_mib"] for r in result["rows"])
    # the full-size UNet's activations at 16×16 latents for 3 candidates are hundreds of MiB
    assert plain > 200 and ckpt < plain
    assert result["rows"][0]["keys"] == ["layer4_mean", "layer4_std", "layer4_mean_2", "layer4_std_2"]  # layer4 is 2×2 at 128 px
    assert "checkpointing saves" in proc.stdout


def test_bench_update_interleaves_pairs_and_accounts_for_drpos_floor(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([str(Path(sys.executable).with_name("drpo")), "bench", "update", "--reward-ratio", "1", "--repeats", "3",
                           "--warmup", "1", "--candidates", "4", "--prompts-per-update", "1", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads((out / "update.json").read_text())["rows"]
    assert len(row["ratios"]) == 3 and row["speedup"]["min"] <= row["speedup"]["median"] <= row["speedup"]["max"]
    assert row["speedup"]["median"] == sorted(row["ratios"])[1]  # the median pair, not a ratio of means
    floor = row["drpo_floor"]
    parts = ("sampling", "reward forward", "features forward", "backward (features + generator)", "optimizer", "left over")
    assert sum(floor[p] for p in parts) == pytest.approx(row["drpo"]["median_s"], rel=0.3)  # medians of parts
    assert len(floor["left over each"]) == 3 and min(floor["left over each"]) >= 0  # the timers run inside the wall time
    assert floor["drift"] > 0 and 0 <= floor["left over share"] < 1
    assert row["stable"] is (row["spread"] <= 0.25)
    line = proc.stdout.splitlines()[0]
    assert ("pairs" in line) if row["stable"] else ("no headline" in line)
    assert "left over beyond its floor" in line


def test_bench_sample_times_drpo_sample_beside_a_plain_diffusers_loop(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([str(Path(sys.executable).with_name("drpo")), "bench", "sample", "--images", "4", "--batch-size", "2",
                           "--repeats", "2", "--threads", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "sample.json").read_text())
    assert result["images"] == 4 and result["batch_size"] == 2 and result["repeats"] == 2
    assert result["drpo_images_per_s"] > 0 and result["diffusers_images_per_s"] > 0
    r = result["speed_ratio"]
    assert r["min"] <= r["median"] <= r["max"] and "images/s" in proc.stdout


def test_drpo_score_calls_the_reward_once_per_batch(tmp_path):
    """A black-box reward pays per call: `drpo score` hands it whole batches, not one image at a time."""
    import torch
    from PIL import Image

    from drpo.eval.metrics import score_manifest
    from drpo.io import write_jsonl

    (tmp_path / "images").mkdir()
    rows = []
    for i in range(10):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "images" / f"{i}.png")
        rows.append({"prompt_id": i, "seed": 42, "prompt": f"p{i}", "image_path": f"images/{i}.png"})
    manifest = write_jsonl(tmp_path / "manifest.jsonl", rows)
    calls = []

    def reward(images, prompts, metadata=None):
        calls.append(len(prompts))
        return images.float().mean(dim=(1, 2, 3))

    df = score_manifest(manifest, reward, tmp_path / "scores.parquet", batch_size=4, metric="red")
    assert calls == [4, 4, 2] and len(df) == 10
    assert df.sort_values("prompt_id")["score"].tolist() == [torch.tensor(i / 3.0).item() for i in range(10)]
