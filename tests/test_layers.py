"""The layers of recsvc: a package imports only from its own layer or the ones below it.

    cli                                 the `recsvc` command
    jobs                                the batch commands
    transport, reports                  gRPC (servicer, converters, error table, server);
                                        the business reports
    app, offline                        the answers RPCs and jobs share; the batch
                                        computation (features, training, simulation, import)
    adapters                            every piece of I/O: Feast, online readers, caps,
                                        the registry, compiled models
    ml                                  runtime model inputs, scorers, calibration, BTYD
    data                                the canonical tables' schemas and reading
    core                                pure rules and formulas (no I/O)
    config, errors, settings, engine... the base every layer may use

Every `import recsvc...` and `from recsvc... import` in a module counts, those inside
functions too (a lazy import is still a dependency). Known exceptions are listed with the
reason; a new one fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "recsvc"

BASE = {"config", "errors", "settings", "defaults", "progress", "metrics", "cliargs", "engine",
        "v1", "__init__"}
LAYERS = {"core": 1, "data": 2, "ml": 3, "adapters": 4, "app": 5, "offline": 5,
          "transport": 6, "reports": 6, "jobs": 7, "cli": 8}
KNOWN: set[tuple[str, str]] = set()


def _layer(part: str) -> int:
    return 0 if part in BASE else LAYERS[part]


def _imports(path: Path) -> set[str]:
    """The recsvc top-level parts (`core`, `models`, ...) a module imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "recsvc" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules() -> list[tuple[str, str, Path]]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        out.append((".".join(("recsvc", *rel.parts)), rel.parts[0], path))
    return out


def test_no_package_imports_a_layer_above_its_own() -> None:
    upward = set()
    for module, part, path in _modules():
        if part == "v1":  # generated protobuf code
            continue
        for imported in _imports(path):
            if imported == part:
                continue
            if _layer(imported) > _layer(part) or (
                    _layer(imported) == _layer(part) and part not in BASE):
                upward.add((module, imported))
    assert upward == KNOWN


def test_the_check_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import recsvc.core.index\nfrom recsvc.models import runtime\n"
                      "def f():\n    from recsvc.adapters.caps import RedisCapStore\n"
                      "from . import sibling\nimport numpy\n", encoding="utf-8")
    assert _imports(module) == {"core", "models", "adapters"}


def test_every_package_has_a_layer() -> None:
    parts = {part for _, part, _ in _modules()}
    assert parts <= BASE | set(LAYERS), parts - BASE - set(LAYERS)


def test_every_recsvc_name_the_benchmarks_and_entry_points_import_exists() -> None:
    """bench/ and training/ are scripts no test imports: a module moved or a name renamed in
    src/ must not leave one of them importing what is gone (lazy imports included)."""
    import importlib.util

    root = SRC.parent.parent
    missing = []
    for path in sorted([*(root / "bench").glob("*.py"), *(root / "training").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recsvc"):
                module = importlib.import_module(str(node.module))
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name)
                            and (not hasattr(module, "__path__")  # a module: no submodules
                                 or importlib.util.find_spec(f"{node.module}.{a.name}") is None)]
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("recsvc"):
                        importlib.import_module(a.name)
    assert missing == []
