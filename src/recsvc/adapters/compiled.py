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

The cache directory and the compiling child are `recsvc.adapters.compile_cache`; reading the
model text (what lleaves supports, the leaf-number model, the probe rows) is
`recsvc.ml.model_text`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
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

from recsvc.adapters.compile_cache import (
    attribution_file,
    default_cache_dir,
    leaves_file,
    object_file,
    sha256_file,
    write_atomic,
)
from recsvc.ml.model_text import check_supported, leaf_model, probe_rows

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
TOLERANCE = 1e-6
"""The largest |compiled - Booster| margin accepted by the self-check (and promised)."""
ZERO_THRESHOLD = float(np.float32(1e-35))
"""LightGBM's kZeroThreshold (a float32): it reads any |x| <= this in a dense row as 0.0."""
MIN_ROWS_PER_THREAD = 2_000
"""Below this many rows per thread, starting threads costs more than it saves."""

_compile_lock = threading.Lock()
# lleaves' entry point: (const double *rows, double *out, int32 start, int32 end)
_ENTRY = CFUNCTYPE(None, c_void_p, c_void_p, c_int32, c_int32)


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
        self._buffers = threading.local()
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

        check_supported(text, multi_output)
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
        final = object_file(folder, fblocksize)
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
            write_atomic(digest_file, hashlib.sha256(data).hexdigest() + "\n")
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

    def predict_one(self, row: F64) -> float:
        """The raw margin of one row (1-D float64, the model's width): the product page's
        call, through buffers of this thread's own whose addresses are known (asking numpy for
        an array's address costs more than the compiled trees here)."""
        if self._entry is None:
            return float(self.predict_raw(row.reshape(1, -1))[0])
        if row.shape != (self.num_feature,):
            raise ValueError(f"expected one row of {self.num_feature} inputs, got shape "
                             f"{row.shape}")
        held = getattr(self._buffers, "held", None)
        if held is None:
            held = self._buffers.held = _Buffers(self.num_feature)
        held.row[:] = _lightgbm_zeros(row)
        self._entry(held.row_address, held.out_address, 0, 1)
        return held.out.item()

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
        data = _lightgbm_zeros(data)
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


def _lightgbm_zeros(data: F64) -> F64:
    """`data` as LightGBM reads a dense row: it drops any |x| <= kZeroThreshold, so it reads
    as exactly 0.0 (which matters at its own +-kZeroThreshold split points); the compiled code
    would not. Count: (zeros + tiny) + nonzeros == size exactly when nothing is tiny."""
    if np.count_nonzero(np.abs(data) <= ZERO_THRESHOLD) + np.count_nonzero(data) != data.size:
        return np.where(np.abs(data) <= ZERO_THRESHOLD, 0.0, data)
    return data


class _Buffers:
    """One thread's input row and output margin for `predict_one`, and their addresses."""

    def __init__(self, width: int) -> None:
        self.row = np.empty(width)
        self.out = np.empty(1)
        self.row_address = self.row.ctypes.data
        self.out_address = self.out.ctypes.data


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
            derived, self.bits, self.per_output = leaf_model(text)
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            folder = cache / sha256_file(model_file)
            folder.mkdir(parents=True, exist_ok=True)
            path = leaves_file(folder)
            if not path.exists() or path.read_text(encoding="utf-8") != derived:
                write_atomic(path, derived)
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
