"""The protobuf floor of the batch answers: their responses built and serialised from answers
computed beforehand, with the servicer's own converters and no dataplane work.

    .venv/bin/python bench/bench_protobuf_floor.py [--calls 500]

Reads the default data as bench/bench_dataplane.py does (`make features && make train`),
computes 50 answers of each kind (100-item hint batches, 200 recommendations, 1,000-member churn
batches, random members and items), then times `converters.batch_hints`,
`converters.recommendations` and `converters.batch_churn_risks` with `SerializeToString` over
them: what a batch answer costs in protobuf whatever the dataplane does, beside the echo floor
of `make bench`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from bench_dataplane import build, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    from recsvc.app.answers import HintRequest, RecommendRequest
    from recsvc.transport import converters

    plane, members, items = build(compiled=True)
    rng = np.random.default_rng(1)
    who = [int(m) for m in rng.choice(members, 50)]
    hints = [plane.hints(HintRequest(m, rng.choice(items, 100, replace=False).tolist()),
                         "floor") for m in who]
    ranked = [plane.recommend(RecommendRequest(m, limit=200), "floor") for m in who]
    risks = [plane.churn_risk(rng.choice(members, 1000).tolist(), "floor") for _ in range(5)]
    cases: list[tuple[str, Callable[[Any], bytes], list[Any], int]] = [
        ("100 hints", lambda a: converters.batch_hints(a).SerializeToString(), hints,
         args.calls),
        ("200 options", lambda a: converters.recommendations(a).SerializeToString(), ranked,
         args.calls),
        ("1,000 risks", lambda a: converters.batch_churn_risks(a).SerializeToString(), risks,
         max(args.calls // 10, 5)),
    ]
    print(f"{'response':<12} {'calls':>6} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9} "
          f"{'bytes':>9}")
    for name, serialise, answers, calls in cases:
        def call(k: int, serialise: Callable[[Any], bytes] = serialise,
                 answers: list[Any] = answers) -> bytes:
            return serialise(answers[k % len(answers)])

        timed(call, min(calls, 20))  # warm up
        t = timed(call, calls)  # µs per call, cycling through the answers
        size = len(call(calls - 1))  # the last answer's
        print(f"{name:<12} {calls:>6} {np.percentile(t, 50):>9.0f} {np.percentile(t, 99):>9.0f} "
              f"{t.mean():>9.0f} {size:>9,}")


if __name__ == "__main__":
    main()
