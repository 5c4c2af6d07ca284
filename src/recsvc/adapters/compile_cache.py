"""Where compiled models live between runs: a cache directory keyed by the model file's
SHA-256, one object file per machine variant, written atomically, and compiled by a child
process at a lower priority so a serving worker never holds its GIL for LLVM.

`compiled` (`CompiledModel`, `CompiledLeaves`) loads from here; `compile_in_child` fills it
(`python -m recsvc.adapters.compiled` is the child).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

from recsvc.ml.model_text import leaf_model
from recsvc.settings import load_settings


def default_cache_dir() -> Path:
    """The settings' `compiled_cache` (RECSVC_COMPILED_CACHE), else the XDG cache directory's
    recsvc/compiled ($XDG_CACHE_HOME, ~/.cache by default)."""
    explicit = load_settings().compiled_cache
    if explicit is not None:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recsvc" / "compiled"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _variant(fblocksize: int) -> str:
    """What the object code depends on besides the model: a stale or foreign object file is
    loaded without any check by lleaves, and code built for another CPU can die on SIGILL."""
    from importlib.metadata import version

    import llvmlite.binding as llvm

    llvm.initialize()
    llvm.initialize_native_target()
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:
        features = ""
    key = "|".join([version("lleaves"), version("llvmlite"), "raw", "fp64", str(fblocksize),
                    llvm.get_process_triple(), llvm.get_host_cpu_name(), features])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def attribution_file(cache_dir: str | os.PathLike[str], sha256: str) -> Path:
    """Where the path-attribution tables of the model whose SHA-256 is `sha256` are kept
    (`attribution.PathAttribution`): beside its compiled code, built by the compiling child
    so a serving worker only reads them."""
    return Path(cache_dir) / sha256 / "attribution.npz"


def leaves_file(folder: Path) -> Path:
    return folder / "leaves-model.txt"


def object_file(folder: Path, fblocksize: int = 34) -> Path:
    """The compiled code of the model whose cache folder (its SHA-256) is `folder`."""
    return folder / f"lleaves-{_variant(fblocksize)}.o"


def cached(model_file: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
           *, leaves: bool = False) -> bool:
    """Whether the compiled code of `model_file` (and of its leaves, with `leaves`) is in the
    cache already, so loading it costs no compilation."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder = cache / sha256_file(model_file)
        if not object_file(folder).exists():
            return False
        if not leaves:
            return True
        derived = leaf_model(Path(model_file).read_text(encoding="utf-8"))[0]
        path = leaves_file(folder)
        return (path.exists() and path.read_text(encoding="utf-8") == derived
                and object_file(cache / sha256_file(path)).exists())
    except (OSError, ValueError):
        return False


COMPILE_NICENESS = 10


def compile_in_child(model_file: str | os.PathLike[str],
                     cache_dir: str | os.PathLike[str] | None = None, *, leaves: bool = False,
                     timeout_s: float = 1800) -> str | None:
    """Compile `model_file` (and its leaves) into the cache in a child process at a lower
    CPU priority, unless the cache holds them already. None when done; else why not (the
    caller then compiles in its own process, as before).

    A serving worker that compiles a newly promoted model itself spends seconds in lleaves'
    and LLVM's Python code generation holding its GIL: its event loop stalled up to 190 ms at
    a time here (a 171-tree model, 10 s of compiling), and on two cores the compiler takes a
    core the calls need. In a child the worker's threads only wait, and `nice` lets the
    calls have the CPU first; the worker then loads the compiled code from the cache. A lock
    file in the cache makes it one compile a machine: the other workers wait for it, then
    find the code in the cache."""
    if cached(model_file, cache_dir, leaves=leaves):
        return None
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder = cache / sha256_file(model_file)
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".compiling.lock", "a+b")  # noqa: SIM115 - held while compiling
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    with lock:
        # one compile a machine: the workers of a server all load a new version at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached(model_file, cache, leaves=leaves):  # another process compiled it meanwhile
            return None
        return _compile_child(model_file, cache, leaves, timeout_s)


def _compile_child(model_file: str | os.PathLike[str], cache: Path, leaves: bool,
                   timeout_s: float) -> str | None:
    cmd = [sys.executable, "-m", "recsvc.adapters.compiled", str(model_file), str(cache)]
    if leaves:
        cmd.append("--leaves")
    try:
        # priority set from here once it runs (preexec_fn is unsafe in a threaded process)
        with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) as proc:
            with contextlib.suppress(OSError):  # it may have ended already: a nicety
                os.setpriority(os.PRIO_PROCESS, proc.pid, COMPILE_NICENESS)
            try:
                _, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                return f"compiling took more than {timeout_s:.0f} s"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0 or not cached(model_file, cache, leaves=leaves):
        return f"the compiling process exited {proc.returncode}: {(err or '')[-500:]}"
    return None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
