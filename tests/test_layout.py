"""The package's imports keep their layering: no cycle, and every import points downwards; and
every SQL statement lives in ``ingress_box.store``.

Layers, top to bottom (README, "Working on it"): the command line and the wiring; the HTTP layer
and the worker; the core that decides things; the store and the pure building blocks; settings
and errors. A module may import its own layer or a lower one, never a higher one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import ingress_box

PACKAGE = Path(ingress_box.__file__).parent

# The first matching prefix decides a module's layer; a new module must be placed here on purpose.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (4, ("ingress_box.cli", "ingress_box.app", "ingress_box.__main__")),
    (3, ("ingress_box.web", "ingress_box.worker")),
    (
        2,
        (
            "ingress_box.ingress",
            "ingress_box.quarantine",
            "ingress_box.attempt",
            "ingress_box.handlers",
            "ingress_box.forward",
            "ingress_box.retry",
            "ingress_box.delivery",
            "ingress_box.mapping_rules",
            "ingress_box.instance_rules",
            "ingress_box.bridge_rules",
            "ingress_box.instance_health",
            "ingress_box.alerts",
            "ingress_box.probe",
            "ingress_box.metrics",
            "ingress_box.backup",
            "ingress_box.doctor",
            "ingress_box.indexer",
            "ingress_box.bridge",
        ),
    ),
    (
        1,
        (
            "ingress_box.store",
            "ingress_box.event",
            "ingress_box.signatures",
            "ingress_box.schemes",
            "ingress_box.plugins",
            "ingress_box.manifests",
            "ingress_box.extract",
            "ingress_box.signing",
            "ingress_box.outbound",
            "ingress_box.ratelimit",
            "ingress_box.logs",
            "ingress_box.values",
            "ingress_box.heartbeat",
            "ingress_box.listing",
        ),
    ),
    (0, ("ingress_box.config", "ingress_box.errors")),
]

# Libraries that belong to one family: the core never speaks HTTP-server or command line.
LIBRARY_HOMES = {
    "starlette": ("ingress_box.web", "ingress_box.app"),
    "uvicorn": ("ingress_box.cli", "ingress_box.web.server"),
    "click": ("ingress_box.cli",),
    "jinja2": ("ingress_box.web",),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    if module == "ingress_box":  # the package itself holds only __version__
        return 0
    for layer, prefixes in LAYERS:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return layer
    raise AssertionError(f"{module} has no layer: add it to LAYERS in {__file__}")


def _imports(module: str) -> tuple[set[str], set[str]]:
    """The package modules and the outside libraries ``module`` imports, anywhere in its file."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    ours: set[str] = set()
    libraries: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name in MODULES else libraries).add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if candidate in MODULES:
                    ours.add(candidate)
                elif target in MODULES:
                    ours.add(target)
                else:
                    libraries.add(target)
    ours.discard(module)
    ours.discard("ingress_box")  # the package itself holds only __version__
    return ours, {name.split(".")[0] for name in libraries}


GRAPH = {module: _imports(module)[0] for module in MODULES}


def test_every_module_has_a_layer() -> None:
    """Each module of the package is placed in exactly one layer."""
    for module in MODULES:
        _layer(module)


def test_imports_point_downwards() -> None:
    """No module imports one of a higher layer."""
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_web_and_worker_do_not_import_each_other() -> None:
    """The HTTP layer reaches the worker through the Box's WorkerHandle, and vice versa never."""
    crossing = [
        f"{module} imports {target}"
        for module, targets in sorted(GRAPH.items())
        for target in sorted(targets)
        if {module.split(".")[1], target.split(".")[1]} == {"web", "worker"}
    ]
    assert crossing == []


def test_no_import_cycle() -> None:
    """The import graph is acyclic (type-only imports included)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_libraries_stay_in_their_family() -> None:
    """Starlette only in web/ and the wiring, click only in cli/, uvicorn only in cli/ and the
    server's configuration, Jinja2 in web/."""
    strays = [
        f"{module} imports {library}"
        for module in sorted(MODULES)
        for library in sorted(_imports(module)[1])
        if library in LIBRARY_HOMES
        and not any(module.startswith(home) for home in LIBRARY_HOMES[library])
    ]
    assert strays == []


_SQL = re.compile(
    r"\s*(SELECT\s.+\sFROM\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s"
    r"|PRAGMA\s+\w+|CREATE\s+(TABLE|INDEX|TRIGGER)\s)",
    re.DOTALL,
)


def test_sql_lives_in_the_store() -> None:
    """No module outside ingress_box.store holds a SQL statement or runs one on a connection."""
    strays = []
    for module, path in sorted(MODULES.items()):
        if module == "ingress_box.store" or module.startswith("ingress_box.store."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if _SQL.match(node.value):
                    strays.append(f"{module}:{node.lineno} {node.value.strip()[:40]!r}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany", "executescript")
            ):
                strays.append(f"{module}:{node.lineno} .{node.func.attr}()")
    assert strays == []
