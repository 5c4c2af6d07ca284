"""LightGBM model files read as text: what lleaves compiles right, a model whose outputs are
its trees' leaf numbers, and probe rows that exercise every split.

Pure functions of the model file's text (no I/O): the compiled-model adapter
(`recsvc.adapters.compiled`) checks a model with them before it trusts native code.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
PROBE_ROWS = 512


def check_supported(text: str, multi_output: bool = False) -> None:
    """Refuse what lleaves would compile into wrong numbers instead of an error."""
    if "\nis_linear=1" in text:
        raise ValueError("linear trees (linear_tree=true) are not supported by lleaves")
    for line in text.splitlines():
        if line.startswith("num_class="):
            if int(line.split("=", 1)[1]) != 1 and not multi_output:
                raise ValueError("only single-output models are supported")
            break


def leaf_model(text: str) -> tuple[str, int, int]:
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
