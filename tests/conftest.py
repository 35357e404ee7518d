"""Tiny twins shared by the whole session: built once, read-only. A test that needs a model in its
own folder links it there (`link(twin, folder)`), so nothing a test writes lands beside another's."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sd_turbo(tmp_path_factory) -> Path:
    """A tiny SD-Turbo (StableDiffusionPipeline of random weights, 32 px)."""
    from drpo.models.tiny import build_tiny_sd_turbo

    return build_tiny_sd_turbo(tmp_path_factory.mktemp("twins") / "sd-turbo")


@pytest.fixture(scope="session")
def tiny_sdxl_turbo(tmp_path_factory) -> Path:
    """A tiny SDXL-Turbo (StableDiffusionXLPipeline of random weights)."""
    from drpo.models.tiny import build_tiny_sdxl_turbo

    return build_tiny_sdxl_turbo(tmp_path_factory.mktemp("twins") / "sdxl-turbo")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny CLIPModel with its processor (a PickScore / CLIP feature twin)."""
    from drpo.models.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("twins") / "clip")


def link(twin: Path, folder: Path) -> Path:
    """`folder` -> the shared twin (a symlink: free, and the twin stays untouched)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(twin, target_is_directory=True)
    return folder
