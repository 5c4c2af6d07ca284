"""Hostile requests against `recsvc serve`, as many as you like: calls and status codes per RPC.

    make fuzz [N=100000]            # .venv/bin/python bench/fuzz.py --calls N

Starts `recsvc serve` on the default data (`make features && make train`) on a free port,
builds requests from the descriptors the server reflects (tests/fuzzing.py, the generator the
suite's test_fuzz.py runs 3,000 of: int64 extremes, unknown enum numbers, NaN, NUL, oversized
and duplicated lists, unknown fields, known ids mixed in), sends them one at a time, and
writes the table to fuzz.{md,json}: in bench/results/ when every option is at its default (the
make fuzz default N), else in a temporary folder, printed (benchutil); --out DIR writes there.
Exits 1 when any call was answered INTERNAL
or UNKNOWN, or the server stopped answering health checks.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the suite's generator, one copy
sys.path.insert(0, str(ROOT / "bench"))

from bench_serving import free_port, server, service_env  # noqa: E402
from benchutil import OUT_HELP, choose_out  # noqa: E402
from fuzzing import Fuzzer, reflected_methods  # noqa: E402

FAILING = ("INTERNAL", "UNKNOWN")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=None, help=OUT_HELP)
    args = parser.parse_args()
    args.out = choose_out(parser, args)  # before any default is filled in

    from recsvc.data import schema
    from recsvc.transport.server import SERVICE_NAME

    known = (schema.read_table(args.data_dir, "members", ["member_id"])["member_id"]
             .to_pylist()[:5] + schema.read_table(args.data_dir, "items", ["item_id"])
             ["item_id"].to_pylist()[:5])
    categories = sorted(set(schema.read_table(args.data_dir, "items", ["category"])
                            ["category"].to_pylist()))[:3]
    address = f"127.0.0.1:{free_port()}"
    env = service_env(args.data_dir, "recsvc", None)
    cmd = [str(Path(sys.executable).parent / "recsvc"), "serve", "--address", address,
           "--metrics-port", "0"]
    codes: collections.Counter[tuple[str, str]] = collections.Counter()
    log = Path(tempfile.mkdtemp()) / "server.log"
    start = time.monotonic()
    with server(cmd, env, address, log), grpc.insecure_channel(address) as channel:
        methods = reflected_methods(channel, SERVICE_NAME)
        calls = {m.name: channel.unary_unary(m.path, request_serializer=lambda b: b,
                                             response_deserializer=lambda b: b)
                 for m in methods}
        fuzzer = Fuzzer(seed=args.seed, known=known, words=categories)
        for k in range(args.calls):
            method = methods[k % len(methods)]
            try:
                calls[method.name](fuzzer.request(method.input), timeout=30)
                codes[(method.name, "OK")] += 1
            except grpc.RpcError as err:
                codes[(method.name, err.code().name)] += 1
            if (k + 1) % 10_000 == 0:
                print(f"fuzz: {k + 1:,} calls, {time.monotonic() - start:.0f} s", flush=True)
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        alive = status.status == health_pb2.HealthCheckResponse.SERVING
    seconds = time.monotonic() - start
    bad = sum(n for (_, code), n in codes.items() if code in FAILING)
    write(args.out, codes, args, seconds, alive)
    print(f"fuzz: {sum(codes.values()):,} calls in {seconds:.0f} s, {bad} INTERNAL/UNKNOWN, "
          f"server {'SERVING' if alive else 'NOT answering health'}; {args.out / 'fuzz.md'}")
    return 0 if bad == 0 and alive else 1


def write(out: Path, codes: collections.Counter[tuple[str, str]], args: argparse.Namespace,
          seconds: float, alive: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rpcs = sorted({rpc for rpc, _ in codes})
    names = sorted({code for _, code in codes}, key=lambda c: (c != "OK", c))
    when = dt.datetime.now(dt.UTC)
    lines = [
        "# Fuzz: hostile requests against `recsvc serve`, calls by status code", "",
        f"Command: `python bench/fuzz.py --calls {args.calls} --seed {args.seed}` "
        f"(`make fuzz N={args.calls}`). Run {when:%Y-%m-%d %H:%M} UTC on "
        f"{platform.machine()} Python {platform.python_version()}, {seconds:.0f} s; "
        f"requests built from the server's reflected descriptors (tests/fuzzing.py). "
        f"Health after the run: {'SERVING' if alive else 'no answer'}.", "",
        "| RPC | calls | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names)]
    for rpc in rpcs:
        row = [codes.get((rpc, c), 0) for c in names]
        lines.append(f"| {rpc} | {sum(row):,} | " + " | ".join(f"{n:,}" for n in row) + " |")
    total = [sum(codes.get((r, c), 0) for r in rpcs) for c in names]
    lines.append(f"| all | {sum(total):,} | " + " | ".join(f"{n:,}" for n in total) + " |")
    bad = sum(n for (_, code), n in codes.items() if code in FAILING)
    lines += ["", f"INTERNAL or UNKNOWN: {bad}."]
    (out / "fuzz.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "fuzz.json").write_text(json.dumps({
        "calls": args.calls, "seed": args.seed, "seconds": seconds, "alive": alive,
        "run": when.isoformat(), "codes": {f"{r} {c}": n for (r, c), n in sorted(codes.items())},
    }, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
