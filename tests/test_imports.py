"""The package's layers: no import cycle between synthimg's subpackages, function-level imports included."""

import ast
from pathlib import Path

import synthimg

ROOT = Path(synthimg.__file__).parent


def _unit(module: str) -> str:
    """The layer a module belongs to: ``synthimg.data.shards`` -> ``data``; top-level modules stand alone."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (type-only imports never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = getattr(child, "test", None) if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _exists(module: str) -> bool:
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph(unit=_unit) -> dict[str, set[str]]:
    """Subpackage -> the subpackages it imports anywhere in its files (module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        src = unit(module)
        graph.setdefault(src, set())
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or ""]
                # ``from synthimg import dist`` imports the module synthimg.dist
                if _exists(targets[0]):  # ``from synthimg.data import shards``: the module synthimg.data.shards
                    targets += [f"{targets[0]}.{a.name}" for a in node.names if _exists(f"{targets[0]}.{a.name}")]
            for t in targets:
                if t.startswith("synthimg.") and _exists(t) and unit(t) != src:
                    graph[src].add(unit(t))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n: str) -> None:
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_no_import_cycle_between_subpackages():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_modules_of_a_subpackage():
    graph = import_graph(unit=lambda m: m)
    inner = {m: {t for t in ts if _unit(t) == _unit(m) and not t.endswith("__init__")} for m, ts in graph.items()}
    packages = {m for m in graph if (ROOT.parent.joinpath(*m.split(".")) / "__init__.py").is_file()}
    # a package's __init__ re-exports its modules; that is not a cycle between modules
    inner = {m: ts - packages for m, ts in inner.items() if m not in packages}
    assert cycles(inner) == []


def test_the_walker_sees_function_level_imports_and_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    graph = import_graph()
    assert "tasks" in graph["cli"] and "dist" in graph["train"]  # cli imports stages inside its commands


def test_the_lowest_layer_stays_light():
    import subprocess
    import sys

    code = ("import sys, synthimg.tasks, synthimg.config; t = synthimg.tasks.get_task('dtd'); "
            "print(sorted(m for m in ('torch', 'torchvision', 'webdataset', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert import_graph()["tasks"] <= {"errors", "atomic", "manifests"}
