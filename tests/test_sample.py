"""`drpo sample`: manifest rows, latent seeds, resume, sharding, and resampling on a settings change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import link

from drpo.contracts import read_manifest
from drpo.eval.sample import SamplerSettings, latent_seed, merge_shards, sample
from drpo.io import read_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_sd_turbo):
    root = tmp_path_factory.mktemp("sample")
    link(tiny_sd_turbo, root / "model")
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p, "prompt_id": i, "tag": "t"}) + "\n" for i, p in enumerate(["a red circle", "a blue square", "two cats"]))
    )
    return root


def test_manifest_rows_seeds_and_resume(setup, tmp_path):
    settings = SamplerSettings(model=str(setup / "model"))
    out = tmp_path / "s"
    manifest = sample(setup / "prompts.jsonl", out, settings, [42, 43], batch_size=2, progress=False)
    rows = read_jsonl(manifest)
    assert len(rows) == 6 and {r["seed"] for r in rows} == {42, 43}
    row = next(r for r in rows if r["seed"] == 43 and r["prompt_id"] == 2)
    assert row["latent_seed"] == 43_000_002 == latent_seed(43, 2) and row["image_path"] == "seed_43/images/000002.png"
    assert row["metadata"] == {"tag": "t"} and row["num_inference_steps"] == 1 and row["guidance_scale"] == 0.0
    assert row["resolution"] == 32 and (out / row["image_path"]).exists()
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed_*/images/*.png")}
    sample(setup / "prompts.jsonl", out, settings, [42, 43], progress=False)  # resume: nothing redrawn
    assert {p: p.stat().st_mtime_ns for p in out.glob("seed_*/images/*.png")} == stamps
    first = out / rows[0]["image_path"]
    original = first.read_bytes()
    first.unlink()  # a lost image is redrawn identically
    sample(setup / "prompts.jsonl", out, settings, [42, 43], progress=False)
    assert first.read_bytes() == original
    first.write_bytes(original[: len(original) // 2])  # a truncated one (a full disk, a copy cut short) too
    sample(setup / "prompts.jsonl", out, settings, [42, 43], progress=False)
    assert first.read_bytes() == original


def test_a_truncated_image_is_a_one_line_error_naming_it(setup, tmp_path, capsys):
    from drpo.cli import main

    out = tmp_path / "s"
    manifest = sample(setup / "prompts.jsonl", out, SamplerSettings(model=str(setup / "model")), [42], progress=False)
    broken = out / read_jsonl(manifest)[1]["image_path"]
    broken.write_bytes(broken.read_bytes()[:40])
    assert main(["score", "--manifest", str(manifest), "--reward", "brightness", "--out", str(tmp_path / "s.parquet"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"drpo score: error: image {broken} cannot be read") and "re-run `drpo sample`" in err
    assert len(err.splitlines()) == 1
    rows = read_manifest(manifest)
    assert all(r.image.startswith("/") and Path(r.image).is_file() and not r.image_path.startswith("/") for r in rows)


def test_shards_merge_to_the_unsharded_set_and_images_match(setup, tmp_path):
    settings = SamplerSettings(model=str(setup / "model"))
    whole = read_jsonl(sample(setup / "prompts.jsonl", tmp_path / "whole", settings, [42], progress=False))
    for i in range(2):
        sample(setup / "prompts.jsonl", tmp_path / "sharded", settings, [42], shard=(i, 2), progress=False)
    merged = read_jsonl(merge_shards(tmp_path / "sharded"))
    assert [r["image_path"] for r in merged] == [r["image_path"] for r in whole]
    for r in whole:
        assert (tmp_path / "whole" / r["image_path"]).read_bytes() == (tmp_path / "sharded" / r["image_path"]).read_bytes()


def test_changed_settings_force_a_resample_and_one_step_rules(setup, tmp_path):
    out = tmp_path / "s"
    sample(setup / "prompts.jsonl", out, SamplerSettings(model=str(setup / "model")), [42], progress=False)
    before = (out / "seed_42/images/000000.png").stat().st_mtime_ns
    sample(setup / "prompts.jsonl", out, SamplerSettings(model=str(setup / "model"), resolution=16), [42], progress=False)
    from PIL import Image

    assert Image.open(out / "seed_42/images/000000.png").size == (16, 16)
    assert (out / "seed_42/images/000000.png").stat().st_mtime_ns != before
    with pytest.raises(ValueError, match="num_inference_steps 1 and guidance 0"):
        sample(setup / "prompts.jsonl", out, SamplerSettings(model=str(setup / "model"), guidance_scale=7.5), [42], progress=False)


def test_new_weights_force_a_resample(setup, tmp_path):
    from drpo.eval.sample import fingerprint
    from drpo.models.generators import OneStepGenerator

    gen = OneStepGenerator.from_pretrained(setup / "model")
    gen.add_lora(rank=4, alpha=4)
    gen.save_lora(tmp_path / "ckpt")
    first = fingerprint(setup / "model", tmp_path / "ckpt")
    settings = SamplerSettings(model=str(setup / "model"), lora=str(tmp_path / "ckpt"), weights=first)
    out = tmp_path / "s"
    sample(setup / "prompts.jsonl", out, settings, [42], progress=False)
    before = (out / "seed_42/images/000000.png").read_bytes()
    import torch

    with torch.no_grad():  # "retrain": the same path, new LoRA weights
        for p in gen.trainable_parameters():
            p.add_(0.5)
    import time

    time.sleep(0.01)
    gen.save_lora(tmp_path / "ckpt")
    second = fingerprint(setup / "model", tmp_path / "ckpt")
    assert second != first
    sample(setup / "prompts.jsonl", out, SamplerSettings(model=str(setup / "model"), lora=str(tmp_path / "ckpt"), weights=second), [42], progress=False)
    assert (out / "seed_42/images/000000.png").read_bytes() != before


def test_multi_step_reference_models_sample_through_their_diffusers_pipeline(setup, tmp_path):
    settings = SamplerSettings(model=str(setup / "model"), model_type="multi_step", num_inference_steps=2, guidance_scale=7.5, scheduler="ddim")
    rows = read_jsonl(sample(setup / "prompts.jsonl", tmp_path / "ref", settings, [42], progress=False))
    assert len(rows) == 3 and rows[0]["model_type"] == "multi_step" and rows[0]["num_inference_steps"] == 2
    assert rows[0]["sampler"] == "multi_step:ddim:2:7.5" and rows[0]["resolution"] == 32
    from PIL import Image

    assert Image.open(tmp_path / "ref" / rows[0]["image_path"]).size == (32, 32)
