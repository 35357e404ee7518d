"""Dependencies point one way: the shapes world depends on the core, the core never imports the
world (it names the world's reward and judge only as lazy "module:Class" registry entries)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "drpo"


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_core_module_imports_the_world():
    # the world's own modules, and its command `drpo world` (commands/world.py), may
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m == "drpo.world" or m.startswith("drpo.world."))
                 for p in PACKAGE.rglob("*.py") if "world" not in p.relative_to(PACKAGE).with_suffix("").parts}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_world_is_reached_through_registries():
    from drpo.eval.judge_backends import JUDGE_BACKENDS, build_judge
    from drpo.rewards import REWARDS

    assert JUDGE_BACKENDS["world"] == "drpo.world.judge:WorldJudge"
    assert type(build_judge("world")).__module__ == "drpo.world.judge"
    assert REWARDS["world_checker"].target == "drpo.world.rewards:CheckerReward"


def test_the_contracts_module_imports_only_the_standard_library():
    import sys

    imported = _imports(PACKAGE / "contracts.py") - {"__future__"}
    outside = sorted(m for m in imported if m.split(".")[0] not in sys.stdlib_module_names and m not in ("PIL", "drpo.io"))
    assert {m for m in _imports(PACKAGE / "io.py") if m.split(".")[0] not in sys.stdlib_module_names} == set()
    assert outside == [], "drpo.contracts must stay dependency-free (PIL only for a type hint)"
    source = (PACKAGE / "contracts.py").read_text()
    assert "from PIL import Image" in source.split("if TYPE_CHECKING:")[1].split("\n\n")[0]


def test_every_step_reads_and_writes_the_records_through_the_contracts():
    """One reader and one writer per record: no other module parses a manifest, a score or judge
    summary, or the results file by hand."""
    hand_made = {
        "manifest": ("_abs_path", "def read_manifest", "def load_manifest", "def _load_rows", "r[\"image_path\"]"),
        "summaries": ("\"preference_share\")", "[\"mean\"]", "s.get(\"mean\")", "s.get(\"preference_share\")"),
        "results": ("RESULT_COLUMNS = [", "columns=[\"table\", \"method\""),
    }
    found = {}
    for p in PACKAGE.rglob("*.py"):
        if p.name == "contracts.py":
            continue
        text = p.read_text()
        for record, needles in hand_made.items():
            hits = [n for n in needles if n in text]
            if hits:
                found[f"{p.relative_to(PACKAGE)} ({record})"] = hits
    assert found == {}


def test_the_judge_modules_import_one_way():
    """contracts <- eval.judge (pairs, order, summary) <- eval.judge_backends (Qwen3-VL, OpenAI) and
    world.judge: no module imports back up the chain, lazily or not."""
    judge, backends = _imports(PACKAGE / "eval" / "judge.py"), _imports(PACKAGE / "eval" / "judge_backends.py")
    assert "drpo.eval.judge_backends" not in judge and "drpo.world.judge" not in judge
    assert "drpo.world.judge" not in backends
    assert "drpo.eval.judge" not in _imports(PACKAGE / "world" / "judge.py")
