"""The advised client channel: every RPC is retried once a worker is gone (UNAVAILABLE) or a
shedder refused it (RESOURCE_EXHAUSTED); a draining replica of several gets no new call."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from recsvc.transport import channel as callers
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc


def test_every_rpc_is_retried_on_unavailable_and_on_a_shedders_refusal() -> None:
    attempts: dict[str, int] = {"GetChurnRisk": 0, "GetNudges": 0, "Other": 0}

    def flaky(name: str, answer: Any, code: grpc.StatusCode | None = None) -> Any:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            attempts[name] += 1
            if code is not None:
                await context.abort(code, "not retried")
            if attempts[name] == 1:  # the first attempt meets a worker going away
                await context.abort(grpc.StatusCode.UNAVAILABLE, "worker restarting")
            if attempts[name] == 2:  # the second, a shedder refusing it
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
            return answer
        return grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=lambda b: b,
            response_serializer=lambda m: m.SerializeToString())

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            callers.SERVICE, {
                "GetChurnRisk": flaky("GetChurnRisk", pb.GetChurnRiskResponse(
                    risk=pb.ChurnRisk(member_id=7))),
                "GetNudges": flaky("GetNudges", pb.GetNudgesResponse(experiment_arm="a")),
                "GetRedemptionHint": flaky("Other", pb.GetRedemptionHintResponse(),
                                           grpc.StatusCode.INVALID_ARGUMENT)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with callers.client_channel(f"127.0.0.1:{port}") as channel:
                stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
                got = await stub.GetChurnRisk(pb.GetChurnRiskRequest(member_id=7), timeout=5)
                assert got.risk.member_id == 7 and attempts["GetChurnRisk"] == 3
                nudged = await stub.GetNudges(pb.GetNudgesRequest(member_id=7), timeout=5)
                assert nudged.experiment_arm == "a" and attempts["GetNudges"] == 3
                try:  # an answer (INVALID_ARGUMENT here) is never retried
                    await stub.GetRedemptionHint(pb.GetRedemptionHintRequest(member_id=7),
                                                 timeout=5)
                    raise AssertionError("INVALID_ARGUMENT expected")
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert attempts["Other"] == 1
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_a_balanced_channel_sends_nothing_to_a_draining_replica() -> None:
    """Two replicas behind one target: both answer; once one drains (health NOT_SERVING, as
    SIGTERM does), every call goes to the other, none fails while it stops, and the callers'
    health watches do not spin on the draining one."""
    from grpc_health.v1 import health_pb2_grpc

    from recsvc.transport.server import Health, drain

    watches = {"a": 0, "b": 0}

    class Counted(Health):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        async def Watch(self, request: Any, context: Any) -> None:
            watches[self.name] += 1
            await super().Watch(request, context)

    async def replica(name: str) -> tuple[grpc.aio.Server, Health, int]:
        async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return pb.GetChurnRiskResponse(model_version=name)
        server = grpc.aio.server()
        health = Counted(name)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            callers.SERVICE, {"GetChurnRisk": grpc.unary_unary_rpc_method_handler(
                answer, request_deserializer=lambda b: b,
                response_serializer=lambda m: m.SerializeToString())})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, health, port

    async def main() -> None:
        (a, a_health, a_port), (b, _, b_port) = await replica("a"), await replica("b")
        target = f"ipv4:127.0.0.1:{a_port},127.0.0.1:{b_port}"
        try:
            async with grpc.aio.insecure_channel(
                    target, options=callers.options(balanced=True)) as channel:
                stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)

                async def who(n: int) -> list[str]:
                    return [(await stub.GetChurnRisk(pb.GetChurnRiskRequest(member_id=1),
                                                     timeout=5)).model_version
                            for _ in range(n)]

                assert set(await who(20)) == {"a", "b"}
                before = watches["a"]
                stopping = asyncio.create_task(drain(a, a_health, notice_s=0.5, grace_s=1))
                await asyncio.sleep(0.1)  # the watch reports NOT_SERVING
                assert set(await who(40)) == {"b"}
                await stopping
                # gRPC restarts a health watch that ended after a message at once: a watch
                # begun while draining stays open until the notice ends, so the drained
                # replica is asked again once, not in a loop that takes its CPU
                assert watches["a"] - before <= 2, watches
                assert set(await who(20)) == {"b"}
        finally:
            await b.stop(None)

    asyncio.run(main())
