"""The one reading of `device: auto` (train configs, `drpo sample/score/judge --device`)."""

from __future__ import annotations


def resolve_device(name: str = "auto"):
    """`auto`: CUDA if torch sees a GPU, else the CPU; any other name as torch reads it."""
    import torch

    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
