"""Tiny twins shared by the whole session: built once, read-only. A test that needs a model in its
own folder links it there (`link(twin, folder)`), so nothing a test writes lands beside another's."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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

    folder = tmp_path_factory.mktemp("twins") / "clip"
    build_tiny_clip(folder)  # returns (model, processor); the fixture hands out the folder
    return folder


def link(twin: Path, folder: Path) -> Path:
    """`folder` -> the shared twin (a symlink: free, and the twin stays untouched)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(twin, target_is_directory=True)
    return folder


@contextlib.contextmanager
def mlflow_server(store_uri: str, folder: Path, *extra: str) -> Iterator[str]:
    """A real `mlflow server --workers 1` (job execution off: ~3 GB less) on a free port of
    127.0.0.1, over `store_uri`; yields its URL and stops it (the whole process group) after."""
    from drpo import tracking

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(folder / "server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", store_uri,
                               "--workers", "1", "--host", "127.0.0.1", "--port", str(port), *extra],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while tracking.probe(url) is not None:
            assert server.poll() is None, (folder / "server.log").read_text()[-2000:]
            assert time.time() < deadline, "mlflow server did not start within 90 s"
            time.sleep(0.25)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
