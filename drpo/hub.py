"""Where model weights come from: a local folder or the Hugging Face cache, never the network.

drpo runs on machines without internet (clusters, CI). Every model is resolved here; a model that
is not on disk fails at once with the command that fetches it on a machine with internet.
"""

from __future__ import annotations

import os
from pathlib import Path

# Never let transformers/diffusers/huggingface_hub try the network behind our back.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class ModelNotFoundError(FileNotFoundError):
    """A model id or path that is neither a local folder nor in the Hugging Face cache."""


def fetch_hint(model_id: str) -> str:
    return (
        f"On a machine with internet, fetch it with:\n"
        f"    hf download {model_id} --local-dir models/{model_id.split('/')[-1]}\n"
        f"then copy that folder here and point the config at it (or copy the Hugging Face cache, "
        f"~/.cache/huggingface/hub, and keep the id)."
    )


def resolve_model(model: str | os.PathLike, *, what: str = "model", allow_patterns: list[str] | None = None) -> Path:
    """Return a local folder (or file) for `model`: an existing path, or a cached hub snapshot.

    Raises ModelNotFoundError within milliseconds when neither exists; never downloads.
    """
    path = Path(os.path.expanduser(str(model)))
    if path.exists():
        return path
    model_id = str(model)
    looks_like_id = model_id.count("/") == 1 and not model_id.startswith((".", "/", "~"))
    if looks_like_id:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(model_id, local_files_only=True, allow_patterns=allow_patterns))
        except Exception:  # any miss in the cache: LocalEntryNotFoundError, EntryNotFoundError, ...
            pass
        raise ModelNotFoundError(
            f"{what} '{model_id}' is not in the local Hugging Face cache and is not a local folder.\n"
            + fetch_hint(model_id)
        )
    raise ModelNotFoundError(f"{what} path '{model_id}' does not exist. Check the path in your config.")
