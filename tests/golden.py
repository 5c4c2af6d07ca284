"""Golden answers: random requests of every RPC, their answers from main, and the comparison.

A rebuild of the serving path must not change what it answers. `requests()` draws the same
requests every time (a seeded generator over the `trained` programme's ids); `answer()` runs
one through a real server and returns the response as plain data (or the error's code and the
field its BadRequest names); `differences()` compares an answer with the recorded one:
propensities, churn probabilities, contributions and scores within 1e-9, other floats to 1e-12
(relative: the index factors are rounded to 12 decimals), everything else exactly.

The fixture carries the models the answers came from (each one's production pointer, trees and
manifest), and the replay serves those: the session's own training gives the same features on
every machine, but not the same trees on every CPU family (the churn model's BTYD fits go
through numpy's and OpenBLAS's CPU-specific kernels, whose last bits differ between AVX-512 and
AVX2 machines, and LightGBM's thresholds keep every bit), and what is held still here is the
serving path, not training.

Capture (once, from the code whose answers are the reference):
    RECSVC_GOLDEN_CAPTURE=1 .venv/bin/python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import MessageToDict

from conftest import bad_request_field
from recsvc.adapters.registry import MANIFEST_FILE, MODEL_FILE, POINTER_FILE, Registry
from recsvc.v1 import recsvc_pb2 as pb

FIXTURE = Path(__file__).parent / "fixtures" / "golden_answers.json.gz"
PER_RPC = 1000
MODEL_TOLERANCE = 1e-9
MODEL_FIELDS = {"propensity", "probability", "contribution", "score", "similarity"}
FLOAT_TOLERANCE = 1e-12


def requests(member_ids: list[int], item_ids: list[int], categories: list[str],
             arms: list[str], seed: int = 13) -> list[tuple[str, Any]]:
    """PER_RPC requests of each RPC, interleaved as a caller mix would send them: known and
    unknown members, items in and out of the catalogue, live balances or none, forced arms,
    and some the service must refuse (a negative balance, too many items, a limit too high)."""
    rng = np.random.default_rng(seed)

    def member(invalid: float = 0.01) -> int:
        r = rng.random()
        if r < 0.9:
            return int(rng.choice(member_ids))
        return -1 if r > 1 - invalid else 10**9 + int(rng.integers(1000))

    def item(unknown: float = 0.02) -> int:
        return 999_999_999 if rng.random() < unknown else int(rng.choice(item_ids))

    def spoilt(ids: list[int], bad: int) -> list[int]:
        """A few batches carry one id the service must refuse."""
        if ids and rng.random() < 0.03:
            ids[int(rng.integers(len(ids)))] = bad
        return ids

    def context() -> pb.RequestContext:
        ctx = pb.RequestContext(surface=int(rng.integers(0, 4)))
        r = rng.random()
        if r < 0.3:
            ctx.points_balance = int(rng.integers(0, 30_000))
        elif r < 0.31:
            ctx.points_balance = -int(rng.integers(1, 100))
        if rng.random() < 0.1:
            ctx.experiment_arm = str(rng.choice(arms)) if rng.random() < 0.9 else "no_such_arm"
        return ctx

    def some_items(most: int) -> list[int]:
        n = int(rng.choice([1, 2, 5, 10, 20, most]))
        return spoilt([item(0) for _ in range(n)], 999_999_999)

    def hint() -> Any:
        return pb.GetRedemptionHintRequest(member_id=member(), item_id=item(), context=context())

    def batch_hints() -> Any:
        r = rng.random()
        ids = [] if r < 0.01 else some_items(100) if r < 0.99 else [item(0) for _ in range(101)]
        return pb.BatchGetRedemptionHintsRequest(member_id=member(), item_ids=ids,
                                                 context=context())

    def recommend() -> Any:
        cats = [] if rng.random() < 0.7 else list(rng.choice(categories, int(rng.integers(1, 3)),
                                                             replace=False))
        if rng.random() < 0.02:
            cats.append("no_such_category")
        limit = 201 if rng.random() < 0.02 else int(rng.choice([0, 1, 3, 5, 10, 20, 50, 200]))
        filters = pb.RecommendationFilters(
            categories=cats, affordable_only=bool(rng.random() < 0.3),
            max_points_price=0 if rng.random() < 0.7 else int(rng.integers(100, 20_000)))
        return pb.RecommendRedemptionsRequest(member_id=member(), limit=limit, filters=filters,
                                              context=context())

    def cart() -> Any:
        lines = [pb.CartLine(item_id=item(0), unit_price_minor=int(rng.integers(100, 60_000)),
                             quantity=int(rng.integers(1, 4)),
                             points_eligible=bool(rng.random() < 0.85))
                 for _ in range(int(rng.integers(0 if rng.random() < 0.01 else 1, 6)))]
        return pb.OptimizeCartSplitRequest(member_id=member(), lines=lines, context=context())

    def churn() -> Any:
        return pb.GetChurnRiskRequest(member_id=member())

    def batch_churn() -> Any:
        n = int(rng.choice([1, 2, 10, 50, 200]))
        return pb.BatchGetChurnRiskRequest(member_ids=spoilt([member(0) for _ in range(n)], -1))

    def nudges() -> Any:
        return pb.GetNudgesRequest(member_id=member(), channel=int(rng.integers(0, 5)),
                                   context=context(), dry_run=bool(rng.random() < 0.5))

    makers = [("GetRedemptionHint", hint), ("BatchGetRedemptionHints", batch_hints),
              ("RecommendRedemptions", recommend), ("OptimizeCartSplit", cart),
              ("GetChurnRisk", churn), ("BatchGetChurnRisk", batch_churn),
              ("GetNudges", nudges)]
    return [(rpc, make()) for _ in range(PER_RPC) for rpc, make in makers]


async def answer(stub: Any, rpc: str, request: Any) -> dict[str, Any]:
    """The response as plain data, or the error: its code, and the field a BadRequest names."""
    try:
        response = await getattr(stub, rpc)(request)
    except grpc.aio.AioRpcError as err:
        out: dict[str, Any] = {"error": err.code().name}
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            out["field"] = bad_request_field(err)
        return out
    return MessageToDict(response, preserving_proto_field_name=True)


def encode_request(rpc: str, request: Any) -> dict[str, Any]:
    return {"rpc": rpc, "request": MessageToDict(request, preserving_proto_field_name=True)}


MODELS = ("churn", "propensity")


def model_files(registry: Registry) -> dict[str, dict[str, str]]:
    """The files of each model's production version, and its pointer, by path in the registry."""
    out = {}
    for name in MODELS:
        version = registry.production(name)
        assert version is not None, f"no {name} model in production"
        out[name] = {path: (registry.root / path).read_text(encoding="utf-8")
                     for path in (f"{name}/{POINTER_FILE}", f"{name}/{version}/{MODEL_FILE}",
                                  f"{name}/{version}/{MANIFEST_FILE}")}
    return out


def registry_of(models: dict[str, dict[str, str]], root: Path, like: Registry) -> Registry:
    """A registry at `root` holding the fixture's models in production (checked as `like`
    checks what it loads)."""
    for files in models.values():
        for path, text in files.items():
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    return Registry(os.fspath(root), known_features=like.known_features)


def save(records: list[dict[str, Any]], models: dict[str, dict[str, str]]) -> None:
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(FIXTURE, "wt", encoding="utf-8") as f:
        json.dump({"models": models, "records": records}, f, separators=(",", ":"))


def load() -> dict[str, Any]:
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        return dict(json.load(f))


def differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Where `got` differs from `want` beyond the tolerances (empty: the same answer)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{path}.{k}: missing" for k in want if k not in got]
        out += [f"{path}.{k}: unexpected {got[k]!r}" for k in got if k not in want]
        for k in want.keys() & got.keys():
            out += differences(got[k], want[k], f"{path}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: {len(got)} elements, want {len(want)}"]
        return [d for k, (g, w) in enumerate(zip(got, want, strict=True))
                for d in differences(g, w, f"{path}[{k}]")]
    if isinstance(want, float) or isinstance(got, float):
        if not isinstance(got, int | float) or not isinstance(want, int | float):
            return [f"{path}: {got!r}, want {want!r}"]
        field = path.rsplit(".", 1)[-1].split("[", 1)[0]
        if field in MODEL_FIELDS:
            ok = math.isclose(got, want, rel_tol=0, abs_tol=MODEL_TOLERANCE)
        else:
            ok = math.isclose(got, want, rel_tol=FLOAT_TOLERANCE, abs_tol=1e-15)
        return [] if ok else [f"{path}: {got!r}, want {want!r}"]
    return [] if got == want else [f"{path}: {got!r}, want {want!r}"]
