"""The package's shape: imports point one way, and the domain stays free of web and cloud libraries.

Read from the source with ``ast`` (no import runs), so a cycle is caught even
where ``from __future__ import annotations`` or a lazy import would hide it at
run time. Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fulfiller"
# The domain: what a request, a job and a master are. Web servers, HTTP clients and cloud SDKs stay outside.
DOMAIN = ("fulfiller.events", "fulfiller.jobs", "fulfiller.media", "fulfiller.hosts", "fulfiller.redact",
          "fulfiller.delivery.routing", "fulfiller.intake.admission", "fulfiller.naming", "fulfiller.measure",
          "fulfiller.measure.base", "fulfiller.measure.aspect", "fulfiller.measure.bmff", "fulfiller.measure.ebml",
          "fulfiller.measure.stills")
OUTSIDE_LIBRARIES = ("starlette", "uvicorn", "httpx", "urllib3", "boto3", "botocore", "googleapiclient", "google",
                     "magic", "psycopg", "prometheus_client")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" or (
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports at run time, absolute, including the imported names' own modules."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
               for child in node.body for n in ast.walk(child)}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str] | None:
        if name in trail:
            return [*trail[trail.index(name):], name]
        if name in done:
            return None
        for imported in sorted(GRAPH[name]):
            # A module importing its package, or a package's __init__ importing its own modules (how a
            # package re-exports), is not a cycle between modules.
            if name.startswith(imported + ".") or imported.startswith(name + "."):
                continue
            if found := visit(imported, [*trail, name]):
                return found
        done.add(name)
        return None

    for name in GRAPH:
        if found := visit(name, []):
            return found
    return None


def test_no_module_imports_itself_through_others() -> None:
    assert _cycle() is None


@pytest.mark.parametrize("module", DOMAIN)
def test_the_domain_imports_no_web_or_cloud_library(module: str) -> None:
    imported = _imports(MODULES[module])
    assert not {m for m in imported if m.split(".")[0] in OUTSIDE_LIBRARIES}
    # nor a part of the package that does
    outer = ("fulfiller.app", "fulfiller.cli", "fulfiller.ops", "fulfiller.catalogs", "fulfiller.store")
    assert not {m for m in imported if m in MODULES and m.startswith(outer)}


def test_a_cycle_is_found() -> None:
    GRAPH["fulfiller.jobs"].add("fulfiller.delivery.engine")
    try:
        assert _cycle() is not None
    finally:
        GRAPH["fulfiller.jobs"].discard("fulfiller.delivery.engine")
