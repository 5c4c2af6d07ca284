"""Compiled LightGBM prediction: lleaves turns a model file into native code, cached by SHA-256.

`CompiledModel(model_file)` compiles the model with lleaves into an object file under a cache
directory keyed by the model file's SHA-256 (plus everything else the machine code depends on),
or loads it from there, and predicts raw margins with it. When compilation fails, or the
compiled code disagrees with LightGBM on a probe of the model's own split points, it logs a
warning and falls back to `lightgbm.Booster.predict(raw_score=True)`: slower, never different.

Equality semantics. lleaves is compiled with `raw_score=True`, so margins come straight from
the summed leaf values (inverting the sigmoid of its transformed output would lose everything
past ~16 digits of probability, i.e. the whole margin of a confident prediction). The margins
equal `Booster.predict(raw_score=True)` up to floating-point summation order (lleaves adds the
trees in cache blocks of 34): differences are ~1e-15, and the contract is |Δ| ≤ 1e-6. Inputs
follow LightGBM's rules: NaN goes the way the split's missing type says (a missing-type-None
split treats NaN as 0.0); a categorical value is truncated to int, NaN, negative and unseen
codes go right (`inputs.encode` gives NaN for null or unseen, which both reproduce); and, as
LightGBM reads dense rows, any |x| <= 1e-35 (its float32 kZeroThreshold) is read as 0.0.

Threads. The compiled entry point is a pure function of (input rows, output rows): ctypes
releases the GIL for the call and every call writes its own output array, so one
`CompiledModel` may be used from several threads at once, and threads really run in parallel.
Compiling is serialised by a process-wide lock (LLVM's global initialisation is not meant to
race). The fallback, `Booster.predict`, is also safe to call from several threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ctypes import CFUNCTYPE, c_int32, c_void_p, cast
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from recsvc.settings import load_settings

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
TOLERANCE = 1e-6
"""The largest |compiled - Booster| margin accepted by the self-check (and promised)."""
PROBE_ROWS = 512
ZERO_THRESHOLD = float(np.float32(1e-35))
"""LightGBM's kZeroThreshold (a float32): it reads any |x| <= this in a dense row as 0.0."""
MIN_ROWS_PER_THREAD = 2_000
"""Below this many rows per thread, starting threads costs more than it saves."""

_compile_lock = threading.Lock()
# lleaves' entry point: (const double *rows, double *out, int32 start, int32 end)
_ENTRY = CFUNCTYPE(None, c_void_p, c_void_p, c_int32, c_int32)


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


class CompiledModel:
    """A LightGBM model file predicting raw margins through lleaves, or through LightGBM."""

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        booster: Any = None,
        verify: bool = True,
        fblocksize: int = 34,
        multi_output: bool = False,
    ) -> None:
        """Compile (or load from the cache) `model_file`; fall back to LightGBM on failure.

        `booster` is the same model already loaded (saves parsing it again for the fallback
        and the self-check). `verify` compares compiled and LightGBM margins on probe rows
        built from the model's split points before the compiled code is trusted.
        `multi_output`: a model of several outputs per row (num_class > 1) is compiled too,
        and `predict_raw` answers (rows, outputs); only for a caller that checks the compiled
        numbers itself (`verify` compares single margins) and needs no fallback (`compiled`
        False means: use something else).
        """
        self.model_file = Path(model_file)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_path: Path | None = None
        self.compiled_now = False
        """True when this instance compiled the model; False when it came from the cache."""
        self.compile_seconds = 0.0
        self.fallback_reason: str | None = None
        self._booster = booster
        self._lleaves: Any = None
        self._entry: Any = None
        self.sha256 = ""
        self.num_feature = 0
        self.outputs = 1
        try:
            self.sha256 = sha256_file(self.model_file)
            text = self.model_file.read_text(encoding="utf-8")
            self._compile(text, fblocksize, multi_output)
            if verify:
                self._verify(text)
        except Exception as exc:  # any failure means: serve with LightGBM instead
            self._lleaves = self._entry = None
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
            log.warning("compiled model %s unavailable, falling back to Booster.predict: %s",
                        self.model_file, self.fallback_reason)
            self.num_feature = int(self.booster.num_feature())

    @property
    def compiled(self) -> bool:
        return self._entry is not None

    @property
    def booster(self) -> Any:
        """The LightGBM booster for this model file (loaded on first use)."""
        if self._booster is None:
            import lightgbm as lgb

            self._booster = lgb.Booster(model_file=str(self.model_file))
        return self._booster

    # -- compilation -------------------------------------------------------------------------

    def attribution_parts(self) -> tuple[Callable[..., npt.NDArray[np.int64]], Path]:
        """What explaining its predictions needs: its leaves compiled too (the leaf index of
        every tree per row), and the file beside its native code that keeps the attribution
        tables."""
        return (CompiledLeaves(self.model_file, self.booster, self.cache_dir).predict_leaf,
                attribution_file(self.cache_dir, self.sha256))

    def _compile(self, text: str, fblocksize: int, multi_output: bool = False) -> None:
        import time

        import lleaves

        _check_supported(text, multi_output)
        model = lleaves.Model(model_file=str(self.model_file))
        self.num_feature = int(model.num_feature())
        self.outputs = int(model.num_model_per_iteration())
        with _compile_lock:
            start = time.perf_counter()
            self.cache_path = self._compile_cached(model, fblocksize)
            self.compile_seconds = time.perf_counter() - start
        self._lleaves = model
        # lleaves' own predict re-checks types and builds typed pointers (~3 µs of a 10 µs
        # single-row call); its entry point, called with plain addresses, is all it runs
        entry = getattr(model, "_c_entry_func", None)
        address = cast(entry, c_void_p).value if entry is not None else None
        if not address:
            raise RuntimeError("lleaves has no compiled entry point after compile()")
        # CFUNCTYPE (not PYFUNCTYPE): ctypes releases the GIL for the call
        self._entry = _ENTRY(address)

    def _compile_cached(self, model: Any, fblocksize: int) -> Path | None:
        folder = self.cache_dir / self.sha256
        final = _object_file(folder, fblocksize)
        digest_file = final.with_name(final.name + ".sha256")
        if final.exists() and digest_file.exists():
            # lleaves maps the bytes without any check: a damaged file would crash the process
            if hashlib.sha256(final.read_bytes()).hexdigest() == digest_file.read_text().strip():
                model.compile(cache=str(final), raw_score=True, fblocksize=fblocksize)
                return final
            log.warning("compiled model cache %s is damaged; recompiling", final)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("compiled model cache %s not writable (%s); compiling in memory",
                        folder, exc)
            model.compile(raw_score=True, fblocksize=fblocksize)
            self.compiled_now = True
            return None
        # lleaves writes its cache file in place while compiling: write a private name and
        # rename it, so a concurrent reader sees no file or a whole one
        tmp = folder / f".{final.name}.{uuid.uuid4().hex}.tmp"
        try:
            model.compile(cache=str(tmp), raw_score=True, fblocksize=fblocksize)
            self.compiled_now = True
            data = tmp.read_bytes()
            os.replace(tmp, final)
            _write_atomic(digest_file, hashlib.sha256(data).hexdigest() + "\n")
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def _verify(self, text: str) -> None:
        probe = probe_rows(text, self.num_feature)
        want = np.asarray(self.booster.predict(probe, raw_score=True, num_threads=1))
        got = self._predict_compiled(probe, 1)
        worst = float(np.max(np.abs(got - want))) if len(probe) else 0.0
        if not worst <= TOLERANCE:
            raise ValueError(f"compiled margins differ from LightGBM's by {worst:.3g} on the "
                             f"probe rows (tolerance {TOLERANCE:g})")

    # -- prediction --------------------------------------------------------------------------

    def predict_raw(self, X: Any, num_threads: int = 1) -> F64:
        """Raw margins (log-odds for a binary model), one per row of the 2-D input `X`.

        `X` is numeric, categoricals as codes (as `inputs.matrix` builds it), not a DataFrame
        with pandas categoricals.

        `num_threads`: 1 for a server (the default); 0 or less for all cores. Rows are split
        across threads only when each thread gets enough of them to pay for starting it.
        """
        if self._entry is None:
            return np.asarray(self.booster.predict(X, raw_score=True, num_threads=num_threads),
                              dtype=np.float64)
        return self._predict_compiled(X, num_threads)

    def predict_proba(self, X: Any, num_threads: int = 1) -> F64:
        """The binary objective's probability 1 / (1 + exp(-margin)), as Booster.predict gives
        it for a model trained with LightGBM's default sigmoid of 1."""
        return 1.0 / (1.0 + np.exp(-self.predict_raw(X, num_threads)))

    def predict(self, X: Any, *, raw_score: bool = False, pred_contrib: bool = False,
                num_threads: int = 1, **kwargs: Any) -> Any:
        """A drop-in for the part of `Booster.predict` that scorers use: raw margins and
        probabilities compiled; anything else (pred_contrib, ...) through LightGBM."""
        if pred_contrib or kwargs:
            return self.booster.predict(X, raw_score=raw_score, pred_contrib=pred_contrib,
                                        num_threads=num_threads, **kwargs)
        if raw_score:
            return self.predict_raw(X, num_threads)
        return self.predict_proba(X, num_threads)

    def _predict_compiled(self, X: Any, num_threads: int) -> F64:
        data = np.ascontiguousarray(X, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self.num_feature:
            raise ValueError(f"expected a 2-D input with {self.num_feature} columns, got "
                             f"shape {data.shape}")
        # LightGBM drops any |x| <= kZeroThreshold from a dense row, so it reads as exactly 0.0
        # (which matters at its own +-kZeroThreshold split points); the compiled code would
        # not. Count: (zeros + tiny) + nonzeros == size exactly when nothing is tiny.
        if np.count_nonzero(np.abs(data) <= ZERO_THRESHOLD) + np.count_nonzero(data) != data.size:
            data = np.where(np.abs(data) <= ZERO_THRESHOLD, 0.0, data)
        rows = data.shape[0]
        if rows >= 2**31 - 1:  # the entry point takes int32 row indices
            raise ValueError("too many rows for one call; split the input")
        out = np.empty(rows if self.outputs == 1 else (rows, self.outputs), dtype=np.float64)
        src, dst = data.ctypes.data, out.ctypes.data
        threads = num_threads if num_threads > 0 else (os.cpu_count() or 1)
        threads = max(1, min(threads, rows // MIN_ROWS_PER_THREAD))
        if threads == 1:
            self._entry(src, dst, 0, rows)
            return out
        bounds = np.linspace(0, rows, threads + 1).astype(int)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            done = [pool.submit(self._entry, src, dst, int(a), int(b))
                    for a, b in itertools.pairwise(bounds)]
            for future in done:
                future.result()
        return out


def _check_supported(text: str, multi_output: bool = False) -> None:
    """Refuse what lleaves would compile into wrong numbers instead of an error."""
    if "\nis_linear=1" in text:
        raise ValueError("linear trees (linear_tree=true) are not supported by lleaves")
    for line in text.splitlines():
        if line.startswith("num_class="):
            if int(line.split("=", 1)[1]) != 1 and not multi_output:
                raise ValueError("only single-output models are supported")
            break


class CompiledLeaves:
    """Which leaf of every tree each row reaches (LightGBM's `pred_leaf`), from native code.

    LightGBM's `pred_leaf` walks the trees in its generic interpreter: 8.5 ms for 1,000 rows of
    the 171-tree churn model here, where the compiled margin of the same trees takes 1.7 ms.
    So the leaves are compiled too: a model with the same trees whose leaf values are their
    own leaf numbers, each tree's shifted into its own bits. With `bits` per leaf number
    (31 leaves: 5), a double holds `52 // bits` trees exactly (10); the trees are dealt to
    that many fewer outputs of a multi-output model (tree t to output t % K, in place t // K:
    lleaves deals trees to outputs that way), so every output is a sum of integers below 2^52,
    exact in any order of addition, and each tree's leaf number is read back with a shift and
    a mask. The derived model is compiled and cached as any other (by its SHA-256), and
    checked against LightGBM's `pred_leaf` on probe rows built from the model's split points;
    when anything fails, `predict_leaf` is LightGBM's.
    """

    def __init__(self, model_file: str | os.PathLike[str], booster: Any,
                 cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.booster = booster
        self.fallback_reason: str | None = None
        self._model: CompiledModel | None = None
        self.trees = int(booster.num_trees())
        try:
            text = Path(model_file).read_text(encoding="utf-8")
            derived, self.bits, self.per_output = _leaf_model(text)
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            folder = cache / sha256_file(model_file)
            folder.mkdir(parents=True, exist_ok=True)
            path = _leaves_file(folder)
            if not path.exists() or path.read_text(encoding="utf-8") != derived:
                _write_atomic(path, derived)
            model = CompiledModel(path, cache, booster=booster, verify=False, multi_output=True)
            if not model.compiled:
                raise RuntimeError(model.fallback_reason or "not compiled")
            self._model = model
            probe = probe_rows(text, model.num_feature)
            want = np.asarray(booster.predict(probe, pred_leaf=True), dtype=np.int64)
            if not np.array_equal(self.predict_leaf(probe), want.reshape(len(probe), -1)):
                raise ValueError("compiled leaves differ from LightGBM's on the probe rows")
        except Exception as exc:  # any failure: LightGBM's pred_leaf, slower, never different
            self._model = None
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
            log.warning("compiled leaves of %s unavailable, using pred_leaf: %s", model_file,
                        self.fallback_reason)

    @property
    def compiled(self) -> bool:
        return self._model is not None

    def predict_leaf(self, X: Any, num_threads: int = 1) -> npt.NDArray[np.int64]:
        """(rows, trees) leaf numbers, as `Booster.predict(X, pred_leaf=True)`."""
        if self._model is None:
            return np.asarray(self.booster.predict(X, pred_leaf=True, num_threads=num_threads),
                              dtype=np.int64).reshape(len(X), -1)
        packed = self._model.predict_raw(X, num_threads).reshape(len(X), -1).astype(np.int64)
        outputs, mask = packed.shape[1], (1 << self.bits) - 1
        leaves = np.empty((len(X), self.trees), dtype=np.int64)
        for place in range(self.per_output):
            first = place * outputs
            if first >= self.trees:
                break
            width = min(outputs, self.trees - first)
            np.bitwise_and(packed[:, :width] >> (self.bits * place), mask,
                           out=leaves[:, first:first + width])
        return leaves


def attribution_file(cache_dir: str | os.PathLike[str], sha256: str) -> Path:
    """Where the path-attribution tables of the model whose SHA-256 is `sha256` are kept
    (`attribution.PathAttribution`): beside its compiled code, built by the compiling child
    so a serving worker only reads them."""
    return Path(cache_dir) / sha256 / "attribution.npz"


def _leaves_file(folder: Path) -> Path:
    return folder / "leaves-model.txt"


def _object_file(folder: Path, fblocksize: int = 34) -> Path:
    """The compiled code of the model whose cache folder (its SHA-256) is `folder`."""
    return folder / f"lleaves-{_variant(fblocksize)}.o"


def cached(model_file: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
           *, leaves: bool = False) -> bool:
    """Whether the compiled code of `model_file` (and of its leaves, with `leaves`) is in the
    cache already, so loading it costs no compilation."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder = cache / sha256_file(model_file)
        if not _object_file(folder).exists():
            return False
        if not leaves:
            return True
        derived = _leaf_model(Path(model_file).read_text(encoding="utf-8"))[0]
        path = _leaves_file(folder)
        return (path.exists() and path.read_text(encoding="utf-8") == derived
                and _object_file(cache / sha256_file(path)).exists())
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


def _leaf_model(text: str) -> tuple[str, int, int]:
    """The model text whose outputs pack the leaf numbers (see CompiledLeaves), its bits per
    leaf number and trees per output."""
    head, rest = text.split("\nTree=", 1)
    body, tail = ("Tree=" + rest).split("\nend of trees", 1)
    trees = body.strip("\n").split("\n\n")
    leaves = [int(_tree_field(t, "num_leaves")) for t in trees]
    bits = max(1, (max(leaves) - 1).bit_length())
    per_output = 52 // bits
    outputs = -(-len(trees) // per_output)
    total = outputs * per_output
    out = [_rewrite(head, {
        "num_class": str(outputs), "num_tree_per_iteration": str(outputs),
        "objective": f"multiclass num_class:{outputs}", "tree_sizes": " ".join(["0"] * total)})]
    for t in range(total):
        # past the model's trees: copies of the first with every leaf 0, to fill the outputs
        real = t < len(trees)
        scale = 1 << (bits * (t // outputs))
        values = [j * scale if real else 0 for j in range(leaves[t if real else 0])]
        out.append(_rewrite(trees[t if real else 0], {
            "Tree": str(t), "leaf_value": " ".join(str(v) for v in values)}))
    return "\n\n".join(out) + "\n\nend of trees" + tail, bits, per_output


def _rewrite(block: str, values: dict[str, str]) -> str:
    """`block` (lines of key=value) with the values of the keys in `values` replaced."""
    def line(text: str) -> str:
        key = text.split("=", 1)[0]
        return f"{key}={values[key]}" if "=" in text and key in values else text
    return "\n".join(line(text) for text in block.split("\n"))


def _tree_field(tree: str, key: str) -> str:
    for line in tree.split("\n"):
        if line.startswith(key + "="):
            return line.split("=", 1)[1]
    raise ValueError(f"a tree without {key}")


def _header(text: str, key: str) -> str | None:
    prefix = key + "="
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix):]
        if line.startswith("Tree="):
            break
    return None


def probe_rows(text: str, n_features: int, rows: int = PROBE_ROWS, seed: int = 0) -> F64:
    """Rows that exercise every split of the model at and beside its thresholds, with NaN,
    zero, negative, unseen and seen category codes: where compiled code could disagree."""
    rng = np.random.default_rng(seed)
    candidates: list[list[float]] = [[np.nan, 0.0, -1.0, 1.0] for _ in range(n_features)]
    infos = (_header(text, "feature_infos") or "").split()
    for j, info in enumerate(infos[:n_features]):
        if info.startswith("["):  # numerical: [min:max]
            lo, hi = (float(v) for v in info[1:-1].split(":"))
            candidates[j] += [lo, hi, lo - 1.0, hi + 1.0]
        elif info != "none":  # categorical: the seen codes, and one unseen
            codes = [float(v) for v in info.split(":")]
            candidates[j] += [*codes, max(codes) + 1.0, max(codes) + 40.0, 2.5]
    split_features: list[npt.NDArray[np.int64]] = []
    thresholds: list[F64] = []
    features = np.empty(0, dtype=np.int64)
    for line in text.splitlines():  # every tree's splits, in the file's order
        if line.startswith("split_feature="):
            features = np.array(line.split("=", 1)[1].split(), dtype=np.int64)
        elif line.startswith("threshold=") and len(features):
            values = np.array(line.split("=", 1)[1].split(), dtype=np.float64)
            n = min(len(features), len(values))
            split_features.append(features[:n])
            thresholds.append(values[:n])
            features = np.empty(0, dtype=np.int64)
    f = np.concatenate(split_features) if split_features else np.empty(0, dtype=np.int64)
    t = np.concatenate(thresholds) if thresholds else np.empty(0)
    out = np.empty((rows, n_features), dtype=np.float64)
    for j, base in enumerate(candidates):
        mine = t[f == j]  # each threshold, and the doubles either side of it
        beside = np.column_stack([mine, np.nextafter(mine, np.inf), np.nextafter(mine, -np.inf)])
        pool = _unique(np.concatenate([np.asarray(base, dtype=np.float64), beside.ravel()]))
        out[:, j] = pool[rng.integers(0, len(pool), rows)]
    return out


def _unique(values: F64) -> F64:
    """The distinct values (NaN once) in the order they first appear."""
    _, first = np.unique(values, return_index=True, equal_nan=True)
    return values[np.sort(first)]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str]) -> int:
    """`python -m recsvc.adapters.compiled MODEL_FILE CACHE_DIR [--leaves]`: compile into the
    cache (`compile_in_child` runs this); 0 when the compiled code passed its checks."""
    import lightgbm as lgb

    args = [a for a in argv if a != "--leaves"]
    model_file, cache = args[0], args[1]
    booster = lgb.Booster(model_file=model_file)
    model = CompiledModel(model_file, cache, booster=booster)
    ok = model.compiled
    if "--leaves" in argv:  # a model explained per prediction: its tables too
        ok = ok and CompiledLeaves(model_file, booster, cache).compiled
        from recsvc.ml.attribution import PathAttribution

        PathAttribution(booster, cache=attribution_file(cache, model.sha256))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
