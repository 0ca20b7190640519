"""The layout of the code base: nodes/ is a plug-in family, and runtime/ knows nothing of avatars.

At the top of ``nodes/`` sits one module per registered node type and nothing else; the domain code
the types share lives in subpackages of ``nodes/`` (each with an honest ``__all__``). No node-type
module imports another, ``runtime/`` imports nothing from ``nodes/``, and ``tools/`` reach shared
code through the subpackages.
"""
from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODES = ROOT / "nodes"


def entry_points() -> dict[str, str]:
    """Type name -> ``module:Class`` of the ``avatar.nodes`` entry points in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["entry-points"]["avatar.nodes"]


def node_modules() -> set[str]:
    return {p.stem for p in NODES.glob("*.py") if p.name != "__init__.py"}


def subpackages() -> list[str]:
    return sorted(p.parent.name for p in NODES.glob("*/__init__.py"))


def imported_modules(path: Path, package: str) -> set[str]:
    """Absolute names of the modules a file imports (``from . import x`` counts as ``package.x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def test_the_top_of_nodes_holds_exactly_the_registered_node_types():
    registered = {target.split(":")[0] for target in entry_points().values()}
    assert all(m.startswith("nodes.") and m.count(".") == 1 for m in registered), registered
    assert node_modules() == {m.split(".", 1)[1] for m in registered}


def test_every_entry_point_names_its_own_module():
    for name, target in entry_points().items():
        assert target.split(":")[0] == f"nodes.{name}", (name, target)


def test_no_node_type_module_imports_another():
    types = {f"nodes.{m}" for m in node_modules()}
    for m in sorted(node_modules()):
        others = imported_modules(NODES / f"{m}.py", "nodes") & (types - {f"nodes.{m}"})
        assert not others, f"nodes/{m}.py imports the node module(s) {', '.join(sorted(others))}"


def test_subpackages_import_no_node_type_module():
    types = {f"nodes.{m}" for m in node_modules()}
    for path in sorted(NODES.glob("*/*.py")):
        package = f"nodes.{path.parent.name}"
        found = imported_modules(path, package) & types
        assert not found, f"{path.relative_to(ROOT)} imports the node module(s) {', '.join(sorted(found))}"


def test_runtime_imports_nothing_from_nodes():
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        found = {m for m in imported_modules(path, package) if m == "nodes" or m.startswith("nodes.")}
        assert not found, f"{path.relative_to(ROOT)} imports {', '.join(sorted(found))}"


def test_tools_import_subpackages_not_node_modules():
    types = {f"nodes.{m}" for m in node_modules()}
    for path in sorted((ROOT / "tools").glob("*.py")):
        found = {m for m in imported_modules(path, "tools") if m in types or m.rsplit(".", 1)[0] in types}
        assert not found, f"{path.relative_to(ROOT)} imports the node module(s) {', '.join(sorted(found))}"


@pytest.mark.parametrize("name", subpackages())
def test_each_subpackage_all_is_honest(name):
    package = importlib.import_module(f"nodes.{name}")
    assert package.__doc__, f"nodes.{name} says in its docstring what it holds"
    for n in package.__all__:
        assert hasattr(package, n), f"nodes.{name}.__all__ names {n}, which it does not have"
    modules = {p.stem for p in (NODES / name).glob("*.py")}
    public = {n for n in vars(package) if not n.startswith("_") and n not in modules and n != "annotations"}
    assert public <= set(package.__all__), f"nodes.{name} exports {sorted(public - set(package.__all__))} outside __all__"


def test_paths_computed_from_a_subpackage_find_the_repository_folders():
    from nodes.delivery import DEFAULT_WEB_ROOT
    from nodes.face import GRAPHS_DIR
    from nodes.livelink import SAMPLE_CAPTURE

    assert (DEFAULT_WEB_ROOT / "index.html").is_file() and DEFAULT_WEB_ROOT == ROOT / "web"
    assert GRAPHS_DIR == ROOT / "graphs" and SAMPLE_CAPTURE.is_file()


def test_the_orchestrator_reaches_nodes_through_subpackages_and_runtime_never_reaches_it():
    types = {f"nodes.{m}" for m in node_modules()}
    for path in sorted((ROOT / "orchestrator").glob("*.py")):
        found = {m for m in imported_modules(path, "orchestrator") if m in types or m.rsplit(".", 1)[0] in types}
        assert not found, f"{path.relative_to(ROOT)} imports the node module(s) {', '.join(sorted(found))}"
    for path in sorted((ROOT / "runtime").rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        found = {m for m in imported_modules(path, package) if m.split(".")[0] == "orchestrator"}
        assert not found, f"{path.relative_to(ROOT)} imports {', '.join(sorted(found))}"


def test_the_orchestrators_all_is_honest():
    import orchestrator

    assert orchestrator.__doc__
    for n in orchestrator.__all__:
        assert hasattr(orchestrator, n), f"orchestrator.__all__ names {n}, which it does not have"
    modules = {p.stem for p in (ROOT / "orchestrator").glob("*.py")}
    public = {n for n in vars(orchestrator) if not n.startswith("_") and n not in modules and n != "annotations"}
    assert public <= set(orchestrator.__all__), f"orchestrator exports {sorted(public - set(orchestrator.__all__))} outside __all__"
