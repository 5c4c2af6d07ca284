"""The layers of recsvc: a package imports only from its own layer or the ones below it.

    cli                                 the `recsvc` command
    serving, reports                    the gRPC service; the batch reports
    models                              training, scoring, the registry
    features                            the feature jobs, Feast, the online readers
    data                                the canonical tables: simulation, import
    core                                pure rules and formulas (no I/O)
    config, errors, settings, engine... the base every layer may use

Every `import recsvc...` and `from recsvc... import` in a module counts, those inside
functions too (a lazy import is still a dependency). Known exceptions are listed with the
reason; a new one fails here (issue 17 is to remove the listed ones).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "recsvc"

BASE = {"config", "errors", "settings", "defaults", "progress", "metrics", "cliargs", "engine",
        "v1", "__init__"}
LAYERS = {"core": 1, "data": 2, "features": 3, "models": 4, "serving": 5, "reports": 5,
          "cli": 6}
KNOWN = {
    # the real-shaped logs are drawn from the BTYD models themselves
    ("recsvc.data.btyd_log", "models"),
}


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
                      "def f():\n    from recsvc.serving.caps import RedisCapStore\n"
                      "from . import sibling\nimport numpy\n", encoding="utf-8")
    assert _imports(module) == {"core", "models", "serving"}


def test_every_package_has_a_layer() -> None:
    parts = {part for _, part, _ in _modules()}
    assert parts <= BASE | set(LAYERS), parts - BASE - set(LAYERS)
