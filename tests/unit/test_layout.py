"""The package layout: arrows point one way (DESIGN.md, "Layout").

Every module of gwagent is parsed (never imported) and every import of a
gwagent module is collected, at module top and inside functions alike: a
function-local import hides a cycle from Python, not from this test. The
package tree is walked, so a new package (the OpenFlow backend, say) is
covered as soon as it exists.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gwagent

ROOT = Path(gwagent.__file__).resolve().parent
CLIENTS = ("gwagent.lab", "gwagent.drill")  # the product's clients, never its parts
ENTRY = "gwagent.cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The gwagent modules that ``name`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    result = set()
    for target in found:
        # "import gwagent.lab.build" names the module; the longest known prefix wins.
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and under(target, "gwagent"):
            result.add(target)
    return result


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walk_sees_the_whole_package():
    names = set(modules())
    assert {"gwagent.cli", "gwagent.model", "gwagent.lab.build", "gwagent.neutron.source",
            "gwagent.drill.cli"} <= names
    assert "gwagent.lab.build" in graph()["gwagent.lab.cli"]


def test_the_cycle_finder_reports_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_anywhere_in_gwagent():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_product_never_imports_the_lab_or_the_drills():
    wrong = sorted((name, target) for name, targets in graph().items()
                   if not any(under(name, c) for c in CLIENTS) and name != ENTRY
                   for target in targets
                   if any(under(target, c) for c in CLIENTS) or target == ENTRY)
    assert wrong == [], "product modules importing the lab, the drills or the cli: " + ", ".join(
        f"{a} -> {b}" for a, b in wrong)


def test_the_lab_never_imports_the_drills():
    wrong = sorted((name, target) for name, targets in graph().items()
                   if under(name, "gwagent.lab")
                   for target in targets if under(target, "gwagent.drill"))
    assert wrong == []


def test_importing_the_cli_does_not_import_the_lab():
    code = ("import sys, gwagent.cli; "
            "print('\\n'.join(m for m in sys.modules if m.startswith('gwagent.lab')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.split() == []


def test_the_cli_lists_lab_and_loads_it_for_a_lab_command():
    code = ("import sys, gwagent.cli as c; c.parser(['--help']).format_help(); "
            "assert not [m for m in sys.modules if m.startswith('gwagent.lab')]; "
            "print(c.parser(['lab', 'up', '--help']).parse_args(['lab', 'up', '--neutron']).neutron)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True"]
    top = subprocess.run([sys.executable, "-m", "gwagent.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert "lab" in top.stdout.split() and "drill" in top.stdout.split()
