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

Each package names its public modules in its `__init__`'s `__all__`; another package (and the
training entry points) imports only those, and of them only names without a leading
underscore. The rest are the package's own (the online store's readers behind `online`, the
importer's CSV reading behind `importer`).
"""

from __future__ import annotations

import ast
import importlib
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


def _cross_package_imports(path: Path, own: str) -> list[tuple[int, str, str, list[str]]]:
    """(line, package, module or "", names) of each import of another recsvc package's
    module (the generated `v1` protobuf package aside): `from recsvc.pkg.mod import a, b`
    gives (n, "pkg", "mod", ["a", "b"]); `from recsvc.pkg import mod` and
    `import recsvc.pkg.mod` give (n, "pkg", "", ["mod"])."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and not node.level:
            parts = (node.module or "").split(".")
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if len(parts) > 2 and parts[0] == "recsvc" and parts[1] not in (own, "v1"):
                    out.append((node.lineno, parts[1], "", [parts[2]]))
            continue
        else:
            continue
        if parts[0] != "recsvc" or len(parts) < 2 or parts[1] in (own, "v1") or \
                not (SRC / parts[1] / "__init__.py").exists():
            continue
        out.append((node.lineno, parts[1], ".".join(parts[2:]), names))
    return out


def test_other_packages_import_only_a_packages_public_modules_and_names() -> None:
    from recsvc import cli

    public = {pkg: set(importlib.import_module(f"recsvc.{pkg}").__all__)
              for pkg in LAYERS if (SRC / pkg / "__init__.py").exists()}
    for pkg, names in public.items():  # every name listed is a module of the package
        assert all((SRC / pkg / f"{n}.py").exists() for n in names), (pkg, names)
    root = SRC.parent.parent
    sources = [(path, part) for _, part, path in _modules() if part != "v1"]
    sources += [(path, "training") for path in sorted((root / "training").glob("*.py"))]
    private = []
    for path, part in sources:
        for line, pkg, module, names in _cross_package_imports(path, part):
            where = f"{path.relative_to(root)}:{line}"
            if module:
                if module.split(".")[0] not in public[pkg] or module.startswith("_"):
                    private.append(f"{where} recsvc.{pkg}.{module}")
                private += [f"{where} recsvc.{pkg}.{module}.{n}" for n in names
                            if n.startswith("_")]
            else:
                private += [f"{where} recsvc.{pkg}.{n}" for n in names if n not in public[pkg]]
    for module, _ in cli.COMMANDS.values():  # the command modules, loaded by name
        pkg, name = module.split(".")[1:]
        if name not in public[pkg]:
            private.append(f"src/recsvc/cli.py {module}")
    assert private == []


def test_the_public_api_check_sees_every_form(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from recsvc.adapters.online_redis import RedisReader\n"
                      "import recsvc.app.profiles\nfrom recsvc.app import dataplane\n"
                      "def f():\n    from recsvc.ml.inputs import _private\n"
                      "from recsvc.errors import ConfigError\nfrom recsvc.core.index import x\n",
                      encoding="utf-8")
    assert _cross_package_imports(module, "core") == [
        (1, "adapters", "online_redis", ["RedisReader"]), (2, "app", "", ["profiles"]),
        (3, "app", "", ["dataplane"]), (5, "ml", "inputs", ["_private"])]
