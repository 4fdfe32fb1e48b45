"""The layering is one-directional (docs/architecture.md):

cli -> loop (graph, runner, checkpoint, team) / verify / report / analysis (replay, infer)
    -> markets -> agents / scenario / ledger -> mechanisms

Every ``import`` of the source tree (module level or inside a function) is read with
``ast`` and checked against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: layer of each top-level part (higher may import lower or equal, never higher)
LAYERS: dict[str, int] = {
    "mechanisms": 0,
    "mbiagents.errors": 1, "mbiagents.faults": 1, "mbiagents.aio": 1, "mbiagents.llm_settings": 1,
    "mbiagents.compile_cache": 1,
    "mbiagents.scenario_base": 1, "mbiagents.scenario_incentives": 1, "mbiagents.scenario": 1,
    "mbiagents.ledger": 1, "mbiagents.agents": 1, "mbiagents.trajectories": 1,
    "mbiagents.markets": 2,
    "mbiagents.graph": 3, "mbiagents.runner": 3, "mbiagents.checkpoint": 3, "mbiagents.verify": 3,
    "mbiagents.report": 3, "mbiagents.replay": 3, "mbiagents.infer": 3, "mbiagents.team": 3,
    "mbiagents.cli": 4,
}
#: within the bottom layer: what each part may import besides itself and mechanisms
BOTTOM = {
    "mbiagents.ledger": {"mbiagents.errors", "mbiagents.faults"},  # storage only
    "mbiagents.scenario": {"mbiagents.errors", "mbiagents.scenario_base", "mbiagents.scenario_incentives",
                           "mbiagents.llm_settings"},
    "mbiagents.scenario_base": {"mbiagents.llm_settings"},
    "mbiagents.scenario_incentives": {"mbiagents.scenario_base"},
    "mbiagents.llm_settings": set(),
    "mbiagents.agents": {"mbiagents.llm_settings", "mbiagents.errors"},
    "mbiagents.trajectories": {"mbiagents.errors"},
    "mbiagents.errors": set(),
    "mbiagents.faults": set(),
    "mbiagents.aio": set(),
    "mbiagents.compile_cache": set(),
}


def part_of(module: str) -> str | None:
    best = None
    for part in LAYERS:
        if (module == part or module.startswith(part + ".")) and (best is None or len(part) > len(best)):
            best = part
    return best


def modules() -> list[tuple[str, Path]]:
    out = []
    for top in ("mechanisms", "mbiagents"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if "migrations" in parts:
                continue
            out.append((".".join(parts), path))
    return out


def imports_of(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}  # "from pkg import submodule"
    return {m for m in out if m.split(".")[0] in ("mbiagents", "mechanisms")}


MODULES = [(m, p) for m, p in modules() if m != "mbiagents"]  # the package root only re-exports lazily


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down(module, path):
    own = part_of(module)
    assert own is not None, f"{module}: not placed in a layer (add it to LAYERS)"
    for target in imports_of(module, path):
        other = part_of(target)
        if other is None or other == own:
            continue
        assert LAYERS[other] <= LAYERS[own], f"{module} imports {target}: layer {other} is above {own}"
        if LAYERS[own] <= 1 and other != "mechanisms":
            assert other in BOTTOM.get(own, set()), f"{module} imports {target}: {own} may not import {other}"


def test_mechanisms_never_import_mbiagents():
    for module, path in MODULES:
        if module.startswith("mechanisms"):
            assert not any(t.startswith("mbiagents") for t in imports_of(module, path)), module


def test_ledger_never_imports_markets_or_verify():
    for module, path in MODULES:
        if module.startswith("mbiagents.ledger"):
            bad = [t for t in imports_of(module, path) if t.startswith(("mbiagents.markets", "mbiagents.verify"))]
            assert not bad, f"{module} imports {bad}"
