"""The package's shape: no import cycles (not even inside functions), modules of a size
one can read, and the SMTP server class kept to the protocol."""

from __future__ import annotations

import ast
import os

from twisted.trial import unittest

import jsmail

PACKAGE_DIR = os.path.dirname(jsmail.__file__)
MAX_MODULE_LINES = 500
MAX_SERVER_CLASS_LINES = 450


def modules() -> dict[str, str]:
    """Every module of the package: dotted name -> path."""
    found = {}
    for directory, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[:-3].replace(os.sep, ".")
            found[relative.removesuffix(".__init__")] = path
    return found


def importsOf(name: str, path: str, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its text (top level,
    inside functions, under TYPE_CHECKING)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    isPackage = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")
                parts = parts[: len(parts) - node.level + (1 if isPackage else 0)]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if candidate in known:
                    found.add(candidate)  # a submodule imported by name
                elif base in known:
                    found.add(base)
    found.discard(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    result: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        onStack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in onStack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                onStack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


class LayoutTests(unittest.TestCase):
    def test_noImportCycles(self) -> None:
        """No module imports, however indirectly and wherever in its text, a module
        that imports it back."""
        found = modules()
        graph = {name: importsOf(name, path, set(found)) for name, path in found.items()}
        self.assertEqual(cycles(graph), [])

    def test_cycleFinderFindsACycle(self) -> None:
        """The cycle finder itself sees a cycle through three modules."""
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}), [["a", "b", "c"]])

    def test_modulesAreReadable(self) -> None:
        """No module is longer than 500 lines (docs/hacking.rst promises this test)."""
        long = {}
        for name, path in modules().items():
            with open(path, encoding="utf-8") as f:
                lines = sum(1 for _ in f)
            if lines > MAX_MODULE_LINES:
                long[name] = lines
        self.assertEqual(long, {})

    def test_serverClassKeepsToTheProtocol(self) -> None:
        """ESMTPServer stays well under 450 lines: parameters, checks, message intake and
        assembly, SASL and the limits live in modules of their own."""
        with open(modules()["jsmail.smtp.server"], encoding="utf-8") as f:
            tree = ast.parse(f.read())
        [server] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ESMTPServer"]
        assert server.end_lineno is not None
        self.assertLess(server.end_lineno - server.lineno + 1, MAX_SERVER_CLASS_LINES)
