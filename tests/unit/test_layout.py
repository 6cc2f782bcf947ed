"""The package's layout (issue 25): no import circle between prunekit modules, no method module
importing the export or the report (methods decide, the pipeline executes), and no source file
over 600 lines. All read the sources statically (ast), so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import prunekit

PACKAGE = Path(prunekit.__file__).parent
MAX_LINES = 600
# The exported modeling file is copied beside the weights as one file: it cannot be split.
LONG_FILES = {"export/shim/modeling_prunekit_llama.py"}


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("prunekit", *path.relative_to(PACKAGE).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for the type checker only, never run."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every prunekit name imported anywhere in ``tree`` (module level and inside functions),
    relative imports resolved; ``from a import b`` gives a.b (b may be a module)."""
    names: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if is_type_checking_block(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, source] if source else base)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in names if name == "prunekit" or name.startswith("prunekit.")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the prunekit modules it imports (a name resolves to its longest module)."""
    modules = module_files()

    def resolve(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = {resolve(n) for n in imported_names(tree, module, path.name == "__init__.py")}
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (its modules, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once fully explored
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_find_cycle_reports_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_resolve_relative_and_function_level_and_skip_type_checking():
    source = (
        "from typing import TYPE_CHECKING\n"
        "from .errors import SettingsError\n"
        "if TYPE_CHECKING:\n"
        "    from prunekit.api import prune\n"
        "def f():\n"
        "    import prunekit.plan\n"
    )
    names = imported_names(ast.parse(source), "prunekit.cli.options", is_package=False)
    assert {"prunekit.cli.errors.SettingsError", "prunekit.plan"} <= names
    assert not any(name.startswith("prunekit.api") for name in names)


def test_no_import_cycle_between_prunekit_modules():
    graph = import_graph()
    assert "prunekit.methods.catalogue" in graph  # the graph really covers the package
    assert "prunekit.methods.registry" in graph["prunekit.methods.depth.blockpruner"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def forbidden_imports(
    graph: dict[str, set[str]], importers: str, forbidden: tuple[str, ...]
) -> dict[str, list[str]]:
    """Modules under ``importers`` -> the modules under any ``forbidden`` package they import."""
    found = {}
    for module, targets in graph.items():
        if within(module, importers):
            bad = sorted(t for t in targets if any(within(t, f) for f in forbidden))
            if bad:
                found[module] = bad
    return found


NOT_FOR_METHODS = ("prunekit.export", "prunekit.report")


def test_forbidden_imports_finds_a_package_and_its_modules_only_under_the_importers():
    graph = {
        "prunekit.methods.a": {"prunekit.report", "prunekit.plan"},
        "prunekit.methods.b.c": {"prunekit.export.streamed", "prunekit.exporting"},
        "prunekit.pipeline.apply": {"prunekit.export.streamed"},
    }
    assert forbidden_imports(graph, "prunekit.methods", NOT_FOR_METHODS) == {
        "prunekit.methods.a": ["prunekit.report"],
        "prunekit.methods.b.c": ["prunekit.export.streamed"],
    }


def test_methods_import_neither_export_nor_report():
    """Methods return decisions; surgery after a search, the streamed export, plots and run
    files are the pipeline's (pipeline/apply.py), at module level and inside functions."""
    graph = import_graph()
    assert "prunekit.methods.depth.common" in graph and "prunekit.methods.combined" in graph
    # The rule has something to hold back: the pipeline's executor imports both.
    assert forbidden_imports(graph, "prunekit.pipeline.apply", NOT_FOR_METHODS)
    found = forbidden_imports(graph, "prunekit.methods", NOT_FOR_METHODS)
    assert not found, f"methods importing the export or the report: {found}"


def test_no_source_file_over_600_lines():
    too_long = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if str(path.relative_to(PACKAGE)) not in LONG_FILES
    }
    too_long = {name: lines for name, lines in too_long.items() if lines > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"
