"""The house plan, read from the code: every import of every module (AST, function-level
imports included) points down the floors flows -> tasks -> steps -> storage -> models, no two
modules import each other in a circle, and no module outgrows ~400 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["models", "storage", "steps", "tasks", "flows"]  # bottom to top
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for floor in FLOORS for p in sorted((ROOT / floor).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports (any depth), names without the `realsr.` prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            name = name.removeprefix("realsr.")
            if name.split(".")[0] in FLOORS:
                found.add(name)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        targets = set()
        for imp in _imports(path):
            while imp and imp not in mods:  # `from steps import degrade` names a module; `steps.degrade.X` a member
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                targets.add(imp)
        graph[name] = targets
    return graph


def test_imports_point_down_the_floors_only():
    up = [(a, b) for a, targets in _graph().items() for b in targets if FLOORS.index(b.split(".")[0]) > FLOORS.index(a.split(".")[0])]
    assert up == [], f"imports that run back up: {up}"


def test_every_project_import_goes_through_the_realsr_namespace():
    """The folders install as `realsr.<folder>` (pyproject's package-dir): a bare `import models`
    would find a user's own package of that name, or fail once installed."""
    bare = [(n, i) for n, p in _modules().items() for i in _all_imports(p) if i.split(".")[0] in FLOORS]
    bare += [
        (p.name, i) for p in sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "bench").glob("*.py")) for i in _all_imports(p) if i.split(".")[0] in FLOORS
    ]
    assert bare == []


def test_prefect_stays_on_the_top_two_floors():
    low = [
        n
        for n, p in _modules().items()
        if n.split(".")[0] in ("models", "storage", "steps") and "prefect" in {(i.removeprefix("realsr.").split(".")[0]) for i in _all_imports(p)}
    ]
    assert low == []


def _all_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_no_circle_of_imports():
    graph, state, circles = _graph(), {}, []

    def visit(n: str, path: list[str]) -> None:
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                circles.append(path[path.index(m) :] + [m] if m in path else [n, m])
            elif m not in state:
                visit(m, path + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert circles == []


def test_no_module_outgrows_the_limit():
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in big.items() if k > MAX_LINES} == {}


def test_training_reads_degrade_runs_through_models_and_storage_only():
    """train-flow's steps use what degrade-flow wrote (records, banks) and the noise drawing it
    shares, not degrade-flow's steps: the two flows' rooms meet on the floors below."""
    graph = _graph()
    side = [(a, b) for a, targets in graph.items() if a.startswith("steps.train") for b in targets if b.startswith("steps.degrade")]
    assert side == [] and any(a.startswith("steps.train") for a in graph)
