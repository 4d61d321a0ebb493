"""Imports run one way: attnbench's import graph, read from the source with ``ast`` (imports
inside functions and under TYPE_CHECKING included), has no cycle; the command line parses
without importing torch."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__) for every module under root/attnbench."""
    mods = {}
    for f in (root / "attnbench").rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


def imported(node: ast.AST, here: str, is_pkg: bool, mods: dict) -> set[str]:
    """The attnbench modules one import statement names (``from a import b``: a.b if a module, else a)."""
    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        return {known(a.name) for a in node.names if a.name.split(".")[0] == "attnbench"} - {None}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        pkg = here if is_pkg else here.rpartition(".")[0]
        for _ in range(node.level - 1):
            pkg = pkg.rpartition(".")[0]
        base = f"{pkg}.{base}" if node.module else pkg
    if base.split(".")[0] != "attnbench":
        return set()
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base) for a in node.names} - {None}


def import_graph(root: Path) -> dict[str, set[str]]:
    mods = module_files(root)
    graph = {}
    for name, (path, is_pkg) in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            deps |= imported(node, name, is_pkg, mods)
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph(ROOT)
    assert {"attnbench.settings", "attnbench.point", "attnbench.run.process", "attnbench.cli"} <= set(graph)
    assert "attnbench.settings" in graph["attnbench.point"]     # the graph is read at all
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_sees_cycles_through_functions_and_type_checking(tmp_path):
    pkg = tmp_path / "attnbench"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from attnbench.sub import top\n")
    (pkg / "sub" / "top.py").write_text("def f():\n    from ..low import x\n")
    (pkg / "other.py").write_text("import attnbench.low\n")
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle is not None and set(cycle) == {"attnbench.low", "attnbench.sub.top"}
    (pkg / "low.py").write_text("x = 1\n")
    assert find_cycle(import_graph(tmp_path)) is None


def test_the_command_line_parses_without_torch():
    code = ("import sys\nfrom attnbench.cli import main\n"
            "for cmd in ([], ['sweep'], ['check'], ['profile'], ['model'], ['drift'], ['report'], ['merge']):\n"
            "    assert main(cmd + ['--help']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
