"""The world's base generator and reward model as shipped files (`drpo/world/shipped/`).

Training them is most of a 2-core `make run` (about 8 and 7 minutes), and both are deterministic
functions of their recipe: seed, step counts, resolution, torch's thread count and the bytes of the
training prompts. So drpo ships what `drpo world ship` builds, with a manifest holding each
model's recipe and every file's sha256. `drpo world train-base/train-reward --shipped` copies the
shipped model when the requested recipe is the shipped one (checking every sha256) and trains
otherwise, saying which key differs; `make world-models` rebuilds the files and
`make world-models-check` checks that a rebuild gives the same bytes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from drpo.errors import UserError
from drpo.io import fresh_dir, sha256_file, write_json

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).with_name("shipped")
MANIFEST = "manifest.json"
KINDS = ("base", "reward_model")


def recipe_of(kind: str, prompts: str | Path, threads: int, **fields) -> dict:
    """What a model of `kind` is a function of: its training settings, torch's thread count (the
    order of floating-point sums) and the sha256 of its training prompts."""
    if kind not in KINDS:
        raise ValueError(f"unknown world model {kind!r} (one of {', '.join(KINDS)})")
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
            "threads": int(threads), "prompts_sha256": sha256_file(prompts)}


def files_of(folder: str | Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `folder`."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def read_shipment(root: str | Path = SHIPPED) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); restore it from git (`git checkout -- {path}`)") from None


def differences(kind: str, recipe: dict, root: str | Path = SHIPPED) -> list[str]:
    """The recipe keys in which the shipped `kind` differs from `recipe` (['not shipped'] if none is)."""
    shipped = read_shipment(root).get(kind)
    if shipped is None:
        return ["not shipped"]
    keys = sorted(set(shipped["recipe"]) | set(recipe))
    return [k for k in keys if shipped["recipe"].get(k) != recipe.get(k)]


def verify(kind: str, root: str | Path = SHIPPED) -> None:
    """Every shipped file of `kind` is there with its manifest's sha256 (UserError naming the file)."""
    folder = Path(root) / kind
    expected = read_shipment(root)[kind]["files"]
    actual = files_of(folder) if folder.is_dir() else {}
    for name, digest in expected.items():
        if actual.get(name) != digest:
            what = "is missing" if name not in actual else f"has sha256 {actual[name][:12]}…, not the manifest's {digest[:12]}…"
            raise UserError(f"{folder / name} {what}: the shipped world model is damaged; restore it "
                            f"(`git checkout -- {folder}`) or train it (`world: {{shipped: false}}` in the config)")


def install(kind: str, recipe: dict, out: str | Path, log: Callable[[str], None] = log.info,
            root: str | Path = SHIPPED) -> bool:
    """Copy the shipped `kind` to `out` if it was built from `recipe` (then True); else log why
    not and return False, so the caller trains it. The copy lands whole or not at all."""
    diff = differences(kind, recipe, root)
    if diff:
        log(f"the shipped world {kind} does not fit this recipe ({', '.join(diff)} differ): training it")
        return False
    verify(kind, root)
    with fresh_dir(out) as work:
        shutil.copytree(Path(root) / kind, work, dirs_exist_ok=True)
    log(f"copied the shipped world {kind} ({Path(root) / kind}, every sha256 checked) to {out}")
    return True


def record(kind: str, recipe: dict, folder: str | Path, root: str | Path = SHIPPED) -> Path:
    """Put the model in `folder` (a finished build) into `root` as `kind`, with its recipe and
    file hashes in the manifest."""
    import torch

    root = Path(root)
    target = root / kind
    if Path(folder).resolve() != target.resolve():
        with fresh_dir(target) as work:
            shutil.copytree(folder, work, dirs_exist_ok=True)
    manifest = read_shipment(root)
    manifest[kind] = {"recipe": recipe, "files": files_of(target), "torch": torch.__version__}
    return write_json(root / MANIFEST, manifest)


def compare(root: str | Path, other: str | Path) -> list[str]:
    """Lines naming every file whose sha256 differs between two shipped trees (empty: identical)."""
    a, b = read_shipment(root), read_shipment(other)
    lines = []
    for kind in KINDS:
        fa, fb = a.get(kind, {}).get("files", {}), b.get(kind, {}).get("files", {})
        if a.get(kind, {}).get("recipe") != b.get(kind, {}).get("recipe"):
            lines.append(f"{kind}: the recipes differ")
        lines += [f"{kind}/{name}: {fa.get(name, 'missing')[:12]} vs {fb.get(name, 'missing')[:12]}"
                  for name in sorted(set(fa) | set(fb)) if fa.get(name) != fb.get(name)]
    return lines
