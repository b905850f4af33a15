"""The engine's shape: data flows one way (no import cycle), and every command is really there."""
import ast
import importlib
from pathlib import Path

import pytest

import cpmae

PACKAGE = Path(cpmae.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """module -> engine modules it imports anywhere in its body (lazy imports in functions count too:
    a cycle through a function-level import is still a circle in the design)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # ``from cpmae.x import name``: the module is cpmae.x
                    t = t.rpartition(".")[0]
                if t and t != name and t != "cpmae":  # the package root only holds __version__
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None (iterative DFS, white/grey/black)."""
    colour, parent = {}, {}
    for start in sorted(graph):
        if colour.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
            elif colour.get(child) == 1:
                cycle = [child] + [n for n, _ in stack[[n for n, _ in stack].index(child) + 1:]]
                return cycle + [child]
            elif not colour.get(child):
                colour[child], parent[child] = 1, node
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_the_engine():
    graph = import_graph()
    assert len(graph) > 40 and "cpmae.pipeline" in graph["cpmae.commands.deidentify"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_command_that_does_not_import_is_an_error(monkeypatch):
    from cpmae import cli

    monkeypatch.setattr(cli, "COMMANDS", cli.COMMANDS + ["no_such_command"])
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()


def test_every_command_module_imports_and_registers():
    from cpmae import cli

    parser = cli.build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert [c.replace("_", "-") for c in cli.COMMANDS] == list(choices)
    for name in cli.COMMANDS:
        assert callable(importlib.import_module(f"cpmae.commands.{name}").register)


def _engine_sources():
    return {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("fact, pattern, home", [
    ("the image suffixes", r'"\.mhd"', {"dataset.py"}),
    ("the model grids", r"\(128, 256\)|\{128: |choices=\(128", {"geometry.py"}),
    ("the file hash", r"hashlib\.sha256\(\)", {"hashing.py"}),
    ("the device rule", r'"cuda" if torch\.cuda\.is_available\(\)', {"device.py"}),
    ("the mask-name rule", r"\"_mask\"|'mask' in|\"mask\" in", {"dataset.py"}),
])
def test_each_fact_is_written_in_one_module(fact, pattern, home):
    import re

    found = {name for name, text in _engine_sources().items() if re.search(pattern, text)}
    assert found <= home, f"{fact} restated in {sorted(found - home)}: import it from {sorted(home)}"


def test_grid_defaults_come_from_geometry():
    """A grid side as a default or a choice (``resolution: int = 128``, ``Choice(["128", "256"])``,
    a .ui combo item) is written nowhere but geometry: everything else names DEFAULT_RESOLUTION,
    QUICK_RESOLUTION or GRIDS."""
    import re

    module = PACKAGE.parent
    sources = {p.relative_to(module).as_posix(): p.read_text(encoding="utf-8")
               for p in list(module.rglob("*.py")) + list(module.rglob("*.ui")) if "egg-info" not in str(p)}
    pattern = re.compile(r"(resolution|in_size|grid)\s*(:\s*int\s*)?=\s*(128|256)\b|\[\"128\", \"256\"\]"
                         r"|<string>(128|256)</string>")
    found = {name for name, text in sources.items() if pattern.search(text)}
    assert found <= {"cpmae/geometry.py"}, f"grid sides restated in {sorted(found)}"
