"""The public prompt lists ship in the package (drpo/data/public/): their bytes, the sets built from
them by name, a corrupted override, and a checkout with nothing beside it planning and building the
paper configs' prompt sets (no ../shared anywhere)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drpo.cli import main as drpo_main
from drpo.data import prompts as P

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ROOT / "drpo" / "data" / "public"
SHARED = ROOT.parent / "shared" / "data"  # developers' / CI copies; never needed, only cross-checked

SHA256 = {  # as published (drpo/data/public/README.md)
    "PartiPrompts.tsv": "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb",
    "geneval_evaluation_metadata.jsonl": "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13",
    "geneval_object_names.txt": "608f6a0e5c8ca1c7a92b818430141fe268c85b7930b50f4160f1d65893b5bacd",
    "pickapic_test_prompts_2048.txt": "d75c025fa451866e70f7e36243f7cdd93095523cb51f5f9651f2ce3236d20262",
    "pickapic_train_prompts_25432.txt": "2f425adcbb9a6d0feee7c6c448e1cb83a1f71deca9434b803907e2578eca837f",
}
# Prompts per set, prepared by name. The training list has 25 432 lines; the first of each prompt
# under normalize_prompt (lowercase, whitespace collapsed) is kept: 25 368 (64 repeats dropped).
COUNTS = {"partiprompts": 1632, "geneval": 553, "geneval_object_names": 80, "pickapic_test_2048": 2048,
          "pickapic_train_25432": 25368}
TRAIN_WITHOUT_TEST = 25362  # ... and with exclude: [pickapic_test], 6 more dropped


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_packaged_files_are_the_published_bytes():
    assert sorted(p.name for p in PUBLIC.iterdir() if p.name != "README.md" and not p.name.startswith(".")) == sorted(SHA256)
    for name, sha in SHA256.items():
        assert P.sha256_file(PUBLIC / name) == sha, name
    for name, src in P.PROMPT_SETS.items():  # every set has its packaged copy, named and hashed as in PROMPT_SETS
        assert src.packaged and P.packaged_path(name) == PUBLIC / src.filename and SHA256[src.filename] == src.sha256
    readme = (PUBLIC / "README.md").read_text()
    assert all(name in readme and sha in readme for name, sha in SHA256.items())


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent (nothing to cross-check)")
def test_packaged_copies_match_the_shared_folder_when_present():
    for name in SHA256:
        if (SHARED / name).exists():
            assert (PUBLIC / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_package_data_covers_the_packaged_files():
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["drpo"]
    pkg = ROOT / "drpo"
    shipped = {p for g in globs for p in pkg.glob(g)}
    assert {PUBLIC / n for n in [*SHA256, "README.md"]} <= shipped and pkg / "METHOD.md" in shipped


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_each_set_by_name_from_the_package(tmp_path, name):
    out = P.prepare_prompt_set(name, tmp_path / f"{name}.jsonl")
    rows = read_rows(out)
    assert len(rows) == COUNTS[name]
    side = P.read_sidecar(out)
    assert side["origin"] == f"package:drpo/data/public/{P.PROMPT_SETS[name].filename}"
    assert side["source_rows"] == P.PROMPT_SETS[name].count and side["count"] == COUNTS[name]
    assert side["duplicates_dropped"] == P.PROMPT_SETS[name].count - COUNTS[name]
    ids = [r["prompt_id"] for r in rows]
    assert ids == sorted(set(ids)) and ids[0] == 0


def test_training_list_dedup_and_test_exclusion(tmp_path):
    test = P.prepare_prompt_set("pickapic_test_2048", tmp_path / "test.jsonl")
    out = P.prepare_prompt_set("pickapic_train_25432", tmp_path / "train.jsonl", exclude=[test])
    rows = read_rows(out)
    assert len(rows) == TRAIN_WITHOUT_TEST
    P.check_disjoint(rows, read_rows(test))
    keys = [P.normalize_prompt(r["prompt"]) for r in rows]
    assert len(set(keys)) == len(keys)
    # kept: the first line of each prompt, its text as written, prompt_id = its 0-based line number
    lines = P.packaged_path("pickapic_train_25432").read_text(encoding="utf-8").splitlines()
    assert all(lines[r["prompt_id"]] == r["prompt"] for r in rows)
    first = {}
    for i, line in enumerate(lines):
        first.setdefault(P.normalize_prompt(line), i)
    assert {r["prompt_id"] for r in rows} <= set(first.values())
    side = P.read_sidecar(out)
    assert (side["source_rows"], side["duplicates_dropped"], len(side["excluded_dropped"])) == (25432, 64, 6)
    assert side["excluded_from"] == [str(test)]
    assert {"prompt_id": 313, "prompt": "full body photo of a beautiful woman"} in side["excluded_dropped"]
    # the CLI says what it dropped
    code = drpo_main(["prompts", "prepare", "pickapic_train_25432", "--out", str(tmp_path / "t2.jsonl"),
                      "--exclude", str(test)])
    assert code == 0 and (tmp_path / "t2.jsonl").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_corrupted_override_raises_checksum_error_naming_the_file(tmp_path, name):
    src = P.PROMPT_SETS[name]
    local = tmp_path / "override"
    local.mkdir()
    data = bytearray(P.packaged_path(name).read_bytes())
    data[10] = ord("#") if data[10] != ord("#") else ord("%")  # one byte changed
    (local / src.filename).write_bytes(bytes(data))
    with pytest.raises(P.ChecksumError) as err:
        P.prepare_prompt_set(name, tmp_path / "out.jsonl", local_dir=local)
    assert str(local / src.filename) in str(err.value) and src.sha256 in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()
    # a good override is used (and named as the origin)
    shutil.copy(P.packaged_path(name), local / src.filename)
    out = P.prepare_prompt_set(name, tmp_path / "out.jsonl", local_dir=local)
    assert P.read_sidecar(out)["origin"] == f"local:{(local / src.filename).resolve()}"


def test_corrupted_or_missing_packaged_copy_is_an_error(tmp_path, monkeypatch):
    bad = tmp_path / "PartiPrompts.tsv"
    bad.write_bytes(P.packaged_path("partiprompts").read_bytes().replace(b"bond", b"bomb", 1))
    monkeypatch.setattr(P, "packaged_path", lambda name: bad)
    with pytest.raises(P.ChecksumError, match=re.escape(str(bad))):
        P.prepare_prompt_set("partiprompts", tmp_path / "o.jsonl")
    monkeypatch.setattr(P, "packaged_path", lambda name: tmp_path / "gone.tsv")
    with pytest.raises(FileNotFoundError, match="packaged copy of prompt set 'partiprompts' is missing"):
        P.prepare_prompt_set("partiprompts", tmp_path / "o.jsonl")


def test_geneval_grammar_reads_the_packaged_object_names(tmp_path):
    out = tmp_path / "g.jsonl"
    assert drpo_main(["prompts", "geneval-grammar", "--n", "50", "--seed", "1", "--out", str(out)]) == 0
    assert len(read_rows(out)) == 50


def test_no_code_or_config_names_the_shared_folder():
    files = [*ROOT.glob("config/**/*.yaml"), *ROOT.glob("workflow/**/*.smk"), *ROOT.glob("workflow/**/*.yaml"),
             ROOT / "Snakefile", *ROOT.glob("drpo/**/*.py")]
    offenders = [str(f.relative_to(ROOT)) for f in files if "../shared" in f.read_text() or "shared/data" in f.read_text()]
    assert offenders == []


# -- a checkout with nothing beside it ------------------------------------------------------------


@pytest.fixture(scope="module")
def bare_checkout(tmp_path_factory) -> Path:
    """The project's files (tracked and untracked-not-ignored) in a folder with no ../shared beside it."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    dest = tmp_path_factory.mktemp("bare") / "drpo-checkout"
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():  # a file deleted in the working tree is still listed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    assert not (dest.parent / "shared").exists() and (dest / "drpo" / "data" / "public" / "PartiPrompts.tsv").is_file()
    return dest


def _snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # the copy's own drpo package, first on the path both for the Snakefile and for the `drpo` CLI
    env = {**os.environ, "PYTHONPATH": str(cwd),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("name", ["sd-turbo", "sdxl-turbo"])
def test_paper_configs_plan_and_build_prompt_sets_without_shared(bare_checkout, name):
    env = {**os.environ, "PYTHONPATH": str(bare_checkout)}
    where = subprocess.run([sys.executable, "-c", "import drpo; print(drpo.__file__)"], cwd=bare_checkout, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(bare_checkout), where
    configfile = f"config/paper/{name}.yaml"
    _snakemake(bare_checkout, "--configfile", configfile, "-n", "--quiet", "rules")
    # ... and the prompt sets really build there, from the packaged copies
    config = yaml.safe_load((bare_checkout / configfile).read_text())
    targets = [f"{config.get('results', 'results')}/prompts/{s}.jsonl" for s in config["prompt_sets"]]
    _snakemake(bare_checkout, "--configfile", configfile, "--cores", "1", *targets)
    counts = {s: len((bare_checkout / t).read_text().splitlines()) for s, t in zip(config["prompt_sets"], targets)}
    expected = {"pickapic_train": TRAIN_WITHOUT_TEST, "pickapic_test": 2048, "parti": 1632, "geneval_test": 553,
                "geneval_train": 2000}
    assert counts == {s: expected[s] for s in counts}
    origins = {P.read_sidecar(bare_checkout / t).get("origin", "") for s, t in zip(config["prompt_sets"], targets)
               if s != "geneval_train"}
    assert all(o.startswith("package:drpo/data/public/") for o in origins), origins
