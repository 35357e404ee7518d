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
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in _imports(p) if m == "drpo.world" or m.startswith("drpo.world."))
                 for p in PACKAGE.rglob("*.py") if "world" not in p.relative_to(PACKAGE).parts}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_world_is_reached_through_registries():
    from drpo.eval.judge_backends import JUDGE_BACKENDS, build_judge
    from drpo.rewards import REWARDS

    assert JUDGE_BACKENDS["world"] == "drpo.world.judge:WorldJudge"
    assert type(build_judge("world")).__module__ == "drpo.world.judge"
    assert REWARDS["world_checker"].target == "drpo.world.rewards:CheckerReward"
