"""The per-rule-family environments: the core one carries exactly pyproject's pins, and no
environment file pulls drpo's pinned torch into a scorer's environment that pins its own."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip(env: Path) -> list[str]:
    deps = yaml.safe_load(env.read_text())["dependencies"]
    return next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)


def test_core_environment_matches_pyproject():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    core = _pip(ROOT / "envs" / "core.yaml")
    assert [p for p in core if "==" in p and not p.startswith("--")] == pins
    assert "--no-deps clean-fid==0.1.35" in core and not any("torchvision" in p for p in core)


def test_every_rule_family_has_an_environment_and_scorers_stay_apart():
    names = {p.stem for p in (ROOT / "envs").glob("*.yaml")}
    assert names == {"core", "geneval", "hpsv3", "imagereward", "judge"}
    for scorer in ("geneval", "hpsv3", "imagereward"):
        assert "-e .." not in _pip(ROOT / "envs" / f"{scorer}.yaml")  # the worker script needs no drpo


def test_rules_reference_their_environment_for_sdm_conda():
    import re

    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: {env}"
    text = (ROOT / "workflow" / "rules" / "evaluate.smk").read_text()
    assert '"../../envs/judge.yaml"' in text and '"../../envs/core.yaml"' in text
