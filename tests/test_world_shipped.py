"""The world's shipped base and reward model (drpo/world/shipped): what the embedded run copies
instead of training them, and the copy/train decision of `drpo world train-base/train-reward --shipped`.
A full rebuild is `make world-models-check` (15 minutes: a benchmark-sized check, not a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from drpo.errors import UserError
from drpo.world import shipped
from drpo.world.base import BaseRecipe, train_base

ROOT = Path(__file__).resolve().parents[1]
TINY = BaseRecipe(vae_steps=2, regression_steps=2, vae_batch=4, prompts_per_step=2, unet_channels=(16, 32), vae_channels=(8, 16, 16),
                  text_width=16)


def test_the_shipped_models_are_whole_and_load():
    manifest = shipped.read_shipment()
    assert set(manifest) == {"base", "reward_model"}
    for kind in shipped.KINDS:
        shipped.verify(kind)  # every file with its manifest's sha256
        assert manifest[kind]["recipe"]["prompts_sha256"] and manifest[kind]["files"]
    from transformers import CLIPModel

    from drpo.models.generators import OneStepGenerator

    gen = OneStepGenerator.from_pretrained(shipped.SHIPPED / "base")
    assert gen.resolution == manifest["base"]["recipe"]["resolution"] == 32
    assert all(p.dtype.is_floating_point and p.dtype == gen.dtype for p in gen.unet.parameters())  # stored half, loaded float32
    assert CLIPModel.from_pretrained(shipped.SHIPPED / "reward_model").config.vision_config.image_size == 32


def test_the_embedded_workflow_copies_the_shipped_models(tmp_path):
    """The seam: the embedded config's prompts rule and world rules, for real, end in the shipped
    bytes without training (a recipe mismatch, e.g. a changed grammar, would train for 15 minutes)."""
    results = tmp_path / "results"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", f"{results}/world/base/model_index.json",
                           f"{results}/world/reward_model/config.json", "--cores", "2", "--config", f"results={results}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for kind in shipped.KINDS:
        log = (results / "logs" / "world" / f"{kind}.log").read_text()
        assert f"copied the shipped world {kind}" in log and "step" not in log, log[-1000:]
        assert shipped.files_of(results / "world" / kind) == shipped.read_shipment()[kind]["files"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A shipped tree of its own holding a tiny base (the install logic, without the real files)."""
    from drpo.io import write_jsonl

    tmp = tmp_path_factory.mktemp("shipped")
    prompts = write_jsonl(tmp / "train.jsonl", [{"prompt": "a photo of a cat", "tag": "single_object", "prompt_id": 0,
                                                 "include": [{"class": "cat", "count": 1}], "exclude": []}])
    train_base(prompts, tmp / "built", TINY, log=lambda m: None)
    recipe = shipped.recipe_of("base", prompts, 1, **asdict(TINY))
    shipped.record("base", recipe, tmp / "built", tmp / "root")
    return tmp / "root", recipe, prompts


def test_install_copies_only_the_very_recipe(tiny_root, tmp_path):
    root, recipe, prompts = tiny_root
    said = []
    assert shipped.install("base", recipe, tmp_path / "base", log=said.append, root=root)
    assert shipped.files_of(tmp_path / "base") == shipped.read_shipment(root)["base"]["files"]
    assert not list(tmp_path.glob(".*"))  # no temporary folder left
    # another thread count, step count or prompt file: train, and say which keys differ
    other = {**recipe, "threads": 2, "vae_steps": 3}
    assert not shipped.install("base", other, tmp_path / "b2", log=said.append, root=root)
    assert said[-1] == "the shipped world base does not fit this recipe (threads, vae_steps differ): training it"
    assert not (tmp_path / "b2").exists()
    assert shipped.differences("reward_model", recipe, root) == ["not shipped"]
    prompts2 = tmp_path / "p.jsonl"
    prompts2.write_text(prompts.read_text().replace("cat", "dog"))
    assert shipped.differences("base", shipped.recipe_of("base", prompts2, 1, **asdict(TINY)), root) == ["prompts_sha256"]


def test_a_damaged_shipped_file_is_named_and_nothing_is_copied(tiny_root, tmp_path):
    import shutil

    root, recipe, _ = tiny_root
    damaged = tmp_path / "root"
    shutil.copytree(root, damaged)
    weights = damaged / "base" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match=r"unet/diffusion_pytorch_model\.safetensors has sha256 .* not the manifest's .*git checkout"):
        shipped.install("base", recipe, tmp_path / "out", log=lambda m: None, root=damaged)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.tmp").exists()


def test_a_build_is_byte_identical_when_repeated(tiny_root, tmp_path):
    """What makes shipping sound: the same recipe writes the same bytes (weights, configs,
    tokenizer, sample grid, recipe.json) — the full-size version of this is `make world-models-check`."""
    root, _, prompts = tiny_root
    again = train_base(prompts, tmp_path / "again", TINY, log=lambda m: None)
    assert shipped.files_of(again) == shipped.read_shipment(root)["base"]["files"]


def test_the_cli_trains_when_the_recipe_is_not_the_shipped_one(tmp_path):
    from drpo.io import write_jsonl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a photo of a cat", "tag": "single_object", "prompt_id": 0,
                                                  "include": [{"class": "cat", "count": 1}], "exclude": []}])
    proc = subprocess.run([sys.executable, "-m", "drpo.cli", "world", "train-reward", "--prompts", str(prompts), "--out",
                           str(tmp_path / "rm"), "--steps", "2", "--threads", "1", "--shipped"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "drpo: the shipped world reward_model does not fit this recipe (prompts_sha256, steps differ): training it" in proc.stderr
    assert "drpo: reward model step 2/2" in proc.stderr and (tmp_path / "rm" / "config.json").exists() and proc.stdout == ""


def test_diagnose_finds_no_ranking_signal_where_no_candidate_can_differ(tmp_path):
    """`drpo world diagnose` on the shipped base with the embedded DrPO recipe. Rows that ask for four
    giraffes (or zebras) under the prompt "a photo of a cat" are failed alike by all K candidates (each is a cat,
    the same clause fails), so the graded checker cannot rank them; colour attribution ranks, and its
    best candidates are more often correct than its worst."""
    import json

    import yaml

    from drpo.cli import main
    from drpo.io import write_jsonl
    from drpo.world.grammar import all_rows

    fours = [{**r, "prompt": "a photo of a cat"} for r in all_rows("counting")
             if r["include"][0]["class"] in ("giraffe", "zebra") and r["include"][0]["count"] == 4]
    write_jsonl(tmp_path / "prompts.jsonl", fours + all_rows("color_attr")[:3])
    config = {"method": "drpo", "output_dir": str(tmp_path / "run"), "model": {"path": str(shipped.SHIPPED / "base")},
              "prompts": {"path": str(tmp_path / "prompts.jsonl")}, "reward": "world_checker_graded",
              "features": {"name": "clip", "options": {"path": str(shipped.SHIPPED / "reward_model")}},
              "drpo": {"candidates": 8, "positives": 2, "negatives": 2}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    assert main(["world", "diagnose", "--config", str(tmp_path / "train.yaml"), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--by", "number", "--json", str(tmp_path / "signal.json")]) == 0
    rows = {r["group"]: r for r in json.loads((tmp_path / "signal.json").read_text())}
    assert set(rows) == {"counting: four", "color_attr"} and rows["counting: four"]["prompts"] == 2
    two, attr = rows["counting: four"], rows["color_attr"]
    assert two["ranked"] == two["correct"] == two["top"] == 0
    assert two["separation"] is two["nearest_correct"] is None and two["separated_prompts"] == 0
    assert attr["ranked"] == 1 and attr["top"] > attr["correct"] > attr["bottom"], attr
    assert not (tmp_path / "run").exists()  # a diagnosis writes nothing of a run
    # --set: the same candidates (the same noise, reward and checker), seen in another feature space
    assert main(["world", "diagnose", "--config", str(tmp_path / "train.yaml"), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--by", "number", "--set", "features.options.keys=[image_embeds]", "--json", str(tmp_path / "embeds.json")]) == 0
    embeds = {r["group"]: r for r in json.loads((tmp_path / "embeds.json").read_text())}["color_attr"]
    assert {k: embeds[k] for k in ("ranked", "correct", "top", "bottom")} == {k: attr[k] for k in ("ranked", "correct", "top", "bottom")}
    assert embeds["separation"] != attr["separation"]


def test_separation_of_two_clusters_and_of_one():
    import torch

    from drpo.world.diagnose import _separation

    ok = torch.tensor([True, True, True, False, False, False, False, False])
    apart = torch.cat([torch.zeros(3, 2), torch.full((5, 2), 10.0)]) + 0.1 * torch.arange(8.0)[:, None]
    ratio, nearest, chance = _separation(apart, ok)
    assert ratio > 20 and nearest == 1.0 and chance == pytest.approx(2 / 7)  # a correct one's neighbour is correct
    mixed = torch.arange(8.0)[:, None].repeat(1, 2)  # on a line, correct ones at 0, 1, 2: each neighbour correct
    assert _separation(mixed, ok)[1] == 1.0
    interleaved = torch.tensor([True, False] * 4)  # correct at 0, 2, 4, 6: every nearest neighbour is wrong
    ratio, nearest, _ = _separation(mixed, interleaved)
    assert nearest == 0.0 and ratio < 1
    assert _separation(mixed, torch.tensor([True] + [False] * 7)) is None  # one correct: nothing to compare
    assert _separation(mixed, torch.ones(8, dtype=torch.bool)) is None


def test_diagnose_refuses_what_it_cannot_read(tmp_path, capsys):
    import yaml

    from drpo.cli import main

    (tmp_path / "prompts.txt").write_text("a photo of a red circle\n")
    config = {"method": "grpo", "output_dir": str(tmp_path / "run"), "model": {"path": str(shipped.SHIPPED / "base")},
              "prompts": {"path": str(tmp_path / "prompts.txt")}, "reward": "world_checker_graded"}
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(config))
    assert main(["world", "diagnose", "--config", str(tmp_path / "grpo.yaml"), "--prompts", str(tmp_path / "prompts.txt")]) == 2
    assert "method is 'grpo'" in capsys.readouterr().err
    (tmp_path / "drpo.yaml").write_text(yaml.safe_dump({**config, "method": "drpo"}))
    assert main(["world", "diagnose", "--config", str(tmp_path / "drpo.yaml"), "--prompts", str(tmp_path / "prompts.txt")]) == 2
    assert "row 1 is not a GenEval row" in capsys.readouterr().err
    assert main(["world", "diagnose", "--config", "x", "--prompts", "y", "--per-group", "0"]) == 2
    assert "--per-group must be at least 1" in capsys.readouterr().err
    assert main(["world", "diagnose", "--config", str(tmp_path / "drpo.yaml"), "--prompts", str(tmp_path / "prompts.txt"),
                 "--set", "drpo.candidatez=3"]) == 2
    assert "--set" in (err := capsys.readouterr().err) and "candidatez" in err
