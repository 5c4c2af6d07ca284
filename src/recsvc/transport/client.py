"""`recsvc client`: call the service from a terminal, one sub-command per RPC, answers as JSON.

A person's first call, and every smoke test's, so it must start at once: building the parser
imports only the standard library and recsvc's light modules (the defaults it shares with the
server are in `recsvc.defaults`), and a call adds grpc, the generated stubs and the advised
channel; never numpy, pandas, pydantic or prometheus (tests/test_cli.py checks).
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from recsvc.cliargs import int_in
from recsvc.defaults import CHANNELS, DEFAULT_RECOMMENDATIONS, GRPC_ADDRESS, MAX_RECOMMENDATIONS

ADDRESS_ENV = "RECSVC_GRPC_ADDRESS"  # Settings.grpc_address, as `recsvc serve` reads it
TOKEN_ENV = "RECSVC_CLIENT_TOKEN"


def packaged_arms() -> list[str]:
    """The experiment arms of the packaged programme, for the help text: read from its TOML
    directly, since validating it (`load_programme`) would load pydantic."""
    text = resources.files("recsvc").joinpath("programme.toml").read_text(encoding="utf-8")
    return [arm["name"] for arm in tomllib.loads(text)["experiments"]["arms"]]


def _context(args: argparse.Namespace) -> Any:
    from recsvc.v1 import recsvc_pb2 as pb

    ctx = pb.RequestContext(experiment_arm=args.arm or "")
    if args.balance is not None:
        ctx.points_balance = args.balance
    return ctx


def _cart_line(text: str) -> Any:
    """ITEM:UNIT_PRICE_MINOR[:QUANTITY[:cash]] -> a CartLine ("cash": not points-eligible)."""
    from recsvc.v1 import recsvc_pb2 as pb

    parts = text.split(":")
    try:
        if not 2 <= len(parts) <= 4 or (len(parts) == 4 and parts[3] != "cash"):
            raise ValueError
        return pb.CartLine(item_id=int(parts[0]), unit_price_minor=int(parts[1]),
                           quantity=int(parts[2]) if len(parts) > 2 else 1,
                           points_eligible=len(parts) < 4)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ITEM:UNIT_PRICE_MINOR[:QUANTITY[:cash]]") from None


def _request(args: argparse.Namespace) -> tuple[str, Any]:
    """The RPC to call and its request, from the command line."""
    from recsvc.v1 import recsvc_pb2 as pb

    if args.call == "churn":
        return (("GetChurnRisk", pb.GetChurnRiskRequest(member_id=args.member_ids[0]))
                if len(args.member_ids) == 1 else
                ("BatchGetChurnRisk", pb.BatchGetChurnRiskRequest(member_ids=args.member_ids)))
    if args.call == "hint":
        if len(args.item_ids) == 1:
            return "GetRedemptionHint", pb.GetRedemptionHintRequest(
                member_id=args.member_id, item_id=args.item_ids[0], context=_context(args))
        return "BatchGetRedemptionHints", pb.BatchGetRedemptionHintsRequest(
            member_id=args.member_id, item_ids=args.item_ids, context=_context(args))
    if args.call == "nudges":
        return "GetNudges", pb.GetNudgesRequest(
            member_id=args.member_id, context=_context(args), dry_run=args.dry_run,
            channel=pb.Channel.Value(f"CHANNEL_{args.channel.upper()}"))
    if args.call == "recommend":
        return "RecommendRedemptions", pb.RecommendRedemptionsRequest(
            member_id=args.member_id, limit=args.limit, context=_context(args),
            filters=pb.RecommendationFilters(categories=args.category or [],
                                             max_points_price=args.max_points_price,
                                             affordable_only=args.affordable_only))
    return "OptimizeCartSplit", pb.OptimizeCartSplitRequest(
        member_id=args.member_id, lines=args.lines, context=_context(args))


async def call(args: argparse.Namespace) -> int:
    """Make the call the command line asks for and print its answer as JSON (0), or the
    status the server answered with (1)."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from recsvc.transport import channel as callers
    from recsvc.v1 import recsvc_pb2_grpc

    rpc, request = _request(args)
    token = args.token or os.environ.get(TOKEN_ENV)
    async with callers.client_channel(args.address, ca=args.tls_ca, cert=args.tls_cert,
                                       key=args.tls_key) as channel:
        stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
        try:
            reply: Any = await getattr(stub, rpc)(request, timeout=args.timeout,
                                                  metadata=callers.bearer(token))
        except grpc.aio.AioRpcError as exc:
            print(f"recsvc client: {rpc}: {exc.code().name}: {exc.details()}")
            return 1
    print(json.dumps(MessageToDict(reply, always_print_fields_with_no_presence=True), indent=2))
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    import asyncio  # a call's cost (grpc loads it anyway), not --help's

    return asyncio.run(call(args))


def _add_calls(c: argparse.ArgumentParser, arms: str) -> None:
    """One sub-command per RPC (a batch RPC where several ids are given)."""
    calls = c.add_subparsers(dest="call", required=True, metavar="CALL")
    churn = calls.add_parser("churn", help="GetChurnRisk, or BatchGetChurnRisk for several ids")
    churn.add_argument("member_ids", type=int, nargs="+")
    member_calls = (
        calls.add_parser("hint", help="GetRedemptionHint, or BatchGetRedemptionHints for "
                                      "several items"),
        calls.add_parser("recommend", help="RecommendRedemptions: the best ways to spend "
                                           "the member's points"),
        calls.add_parser("cart", help="OptimizeCartSplit: the points/cash split of an order"),
        calls.add_parser("nudges", help="GetNudges: the reminders due to the member now, "
                                        "within the frequency caps"),
    )
    for call_parser in member_calls:
        call_parser.add_argument("member_id", type=int)
        call_parser.add_argument("--balance", type=int, default=None,
                                 help="the member's live points balance (default: the store's)")
        call_parser.add_argument("--arm", default="",
                                 help="force an experiment arm (default: the member's own); the "
                                      f"packaged programme's arms: {arms} ([experiments] in "
                                      "programme.toml; the server checks against its own)")
    hint, recommend, cart, nudge = member_calls
    hint.add_argument("item_ids", type=int, nargs="+")
    recommend.add_argument("--limit", type=int_in(1, MAX_RECOMMENDATIONS),
                           default=DEFAULT_RECOMMENDATIONS,
                           help=f"how many options, 1-{MAX_RECOMMENDATIONS} "
                                f"(default {DEFAULT_RECOMMENDATIONS})")
    recommend.add_argument("--category", action="append",
                           help="only this category (repeat for several); a name the catalogue "
                                "does not have is refused with the list of those it has")
    recommend.add_argument("--max-points-price", type=int, default=0,
                           help="only options up to this many points (default 0: no limit)")
    recommend.add_argument("--affordable-only", action="store_true",
                           help="only options the member's balance pays for")
    cart.add_argument("lines", type=_cart_line, nargs="+",
                      metavar="ITEM:UNIT_PRICE_MINOR[:QUANTITY[:cash]]",
                      help='an order line; ":cash" marks a line points may not pay for')
    nudge.add_argument("--channel", choices=CHANNELS, default="in_app",
                       help="the channel the nudges would go out on (default %(default)s)")
    nudge.add_argument("--dry-run", action="store_true",
                       help="preview: do not count the nudges against their caps")


def register(sub: Any) -> None:
    arms = ", ".join(packaged_arms())
    c = sub.add_parser("client", help="call the service from a terminal",
                       description="A small client for people and smoke tests: one sub-command "
                                   "per RPC, the answer printed as JSON. Money is in minor units "
                                   "(cents).",
                       epilog=f"hint, recommend, cart and nudges take --arm to force an "
                              f"experiment arm; the packaged programme's arms: {arms}. "
                              "`recsvc client CALL --help` shows a call's options.")
    c.add_argument("--address", default=os.environ.get(ADDRESS_ENV) or GRPC_ADDRESS,
                   help=f"host:port of the service (default ${ADDRESS_ENV} or {GRPC_ADDRESS}, "
                        "where `recsvc serve` listens)")
    c.add_argument("--timeout", type=float, default=5.0, help="deadline in seconds (default 5)")
    c.add_argument("--tls-ca", type=Path, default=None,
                   help="CA bundle (PEM) to trust: speak TLS to the server")
    c.add_argument("--tls-cert", type=Path, default=None,
                   help="client certificate (PEM), for a server that asks mutual TLS")
    c.add_argument("--tls-key", type=Path, default=None, help="the client certificate's key")
    c.add_argument("--token", default=None, help=f"bearer token (default: ${TOKEN_ENV})")
    _add_calls(c, arms)
    c.set_defaults(func=_cmd_client)
