"""The package's layers only point down: stage packages never import each other, the shared lower
layer imports no stage, and no two parts of the package import each other (docs/architecture.md)."""

import ast
from pathlib import Path

import kpod

PACKAGE = Path(kpod.__file__).parent
ENTRY_POINTS = {"cli", "config_commands", "quickstart", "integrations"}
ORCHESTRATION = {"pipeline", "report", "pages", "export"}
STAGES = {"teacher", "weighting", "curriculum", "student", "evaluation"}


def part_of(module: str) -> str:
    """kpod.weighting.train -> weighting; kpod.models -> models."""
    return module.split(".")[1] if module.count(".") else module


def import_graph() -> dict[str, set[str]]:
    """Part of the package -> the parts it imports (every import statement, also inside functions)."""
    graph: dict[str, set[str]] = {}
    for file in PACKAGE.rglob("*.py"):
        module = ".".join(("kpod", *file.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        if module == "kpod":
            continue
        imported = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kpod."):
                imported.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.module == "kpod":
                imported.update(f"kpod.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("kpod."))
        part = part_of(module)
        graph.setdefault(part, set()).update(part_of(m) for m in imported if part_of(m) != part)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_stage_packages_never_import_each_other():
    graph = import_graph()
    assert STAGES <= graph.keys()
    crossings = {(a, b) for a in STAGES for b in graph[a] if b in STAGES}
    assert not crossings, f"stage packages import each other: {sorted(crossings)}"


def test_the_lower_layer_imports_no_stage_and_nothing_above():
    graph = import_graph()
    lower = graph.keys() - STAGES - ORCHESTRATION - ENTRY_POINTS
    assert {"models", "artifacts", "config", "rationale", "token_weights", "layout", "decoding"} <= lower
    upward = {(a, b) for a in lower for b in graph[a] if b in STAGES | ORCHESTRATION | ENTRY_POINTS}
    assert not upward, f"the shared layer imports a stage or the orchestration: {sorted(upward)}"
    assert not {(a, b) for a in ORCHESTRATION | STAGES for b in graph[a] if b in ENTRY_POINTS}


def test_no_import_cycle_between_parts_of_the_package():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
