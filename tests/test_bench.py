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
