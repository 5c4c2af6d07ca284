"""Outside clients that know the service only through server reflection (buf curl, grpcurl):
both reflection protocols answer, and the google.rpc error details resolve through them.

The server is the real grpc.aio one with the catalogue tests' in-memory adapters (no store, no
training); the blocking clients (grpcio's sync reflection client, buf curl) run in a thread
while this thread's loop serves, as in test_serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status

from recsvc.transport.server import (
    REFLECTION_SERVICES,
    SERVICE_NAME,
)
from recsvc.v1 import recsvc_pb2 as pb
from recsvc.v1 import recsvc_pb2_grpc
from test_serving_catalogue import MEMBER, served

BUF = Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "buf"
UNSET_ITEM = "item_id: must be set: ids start at 1, got 0"  # the answer to an item id of 0


def _serve(check: Callable[[str], None]) -> None:
    """Run `check(address)` in a thread against a started, serving server."""
    async def main() -> None:
        async with served() as address:
            await asyncio.to_thread(check, address)

    asyncio.run(main())


def _reflect(channel: grpc.Channel, service: str,
             requests: list[reflection_pb2.ServerReflectionRequest],
             ) -> list[reflection_pb2.ServerReflectionResponse]:
    """Raw calls to the reflection service named `service`. grpcio ships messages for v1alpha
    only; they are v1's bytes too (the protos differ only in their package)."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=10))


def _file_names(response: reflection_pb2.ServerReflectionResponse) -> list[str]:
    """The files a file_* answer sent, the one asked for first."""
    assert response.HasField("file_descriptor_response"), response.error_response
    return [descriptor_pb2.FileDescriptorProto.FromString(raw).name
            for raw in response.file_descriptor_response.file_descriptor_proto]


def _unset_item(channel: grpc.Channel) -> grpc.RpcError:
    """The error an item id of 0 gets (INVALID_ARGUMENT with a BadRequest detail)."""
    stub = recsvc_pb2_grpc.RedemptionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.GetRedemptionHint(pb.GetRedemptionHintRequest(member_id=1, item_id=0), timeout=10)
    return err.value


def test_both_reflection_protocols_list_the_service_and_resolve_the_error_details() -> None:
    ask = reflection_pb2.ServerReflectionRequest

    def check(address: str) -> None:
        with grpc.insecure_channel(address) as channel:
            for service in REFLECTION_SERVICES:  # v1 and v1alpha
                listed, ours, bad, status = _reflect(channel, service, [
                    ask(list_services=""), ask(file_containing_symbol=SERVICE_NAME),
                    ask(file_containing_symbol="google.rpc.BadRequest"),
                    ask(file_containing_symbol="google.rpc.Status")])
                names = {s.name for s in listed.list_services_response.service}
                assert {SERVICE_NAME, *REFLECTION_SERVICES} <= names, service
                assert _file_names(ours)[0] == "recsvc/v1/recsvc.proto"
                assert _file_names(bad)[0] == "google/rpc/error_details.proto"
                assert _file_names(status)[0] == "google/rpc/status.proto"
            # as grpcurl prints a detail: its type resolved through reflection alone (a pool
            # that starts empty), then the bytes decoded with it
            database = ProtoReflectionDescriptorDatabase(channel)  # v1alpha
            assert SERVICE_NAME in set(database.get_services())
            pool = descriptor_pool.DescriptorPool(database)
            status = rpc_status.from_call(_unset_item(channel))
            assert status is not None and status.message == UNSET_ITEM
            detail = status.details[0]
            reflected = pool.FindMessageTypeByName(detail.type_url.rsplit("/", 1)[-1])
            bad = message_factory.GetMessageClass(reflected).FromString(detail.value)
            assert reflected.full_name == "google.rpc.BadRequest"
            assert [(v.field, v.description) for v in bad.field_violations] == [
                ("item_id", "must be set: ids start at 1, got 0")]

    _serve(check)


def _buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    """buf curl over plaintext HTTP/2 with the gRPC protocol, as the README shows it."""
    return subprocess.run([str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
                           *args], capture_output=True, text=True, timeout=60, check=False)


def _bad_request(detail: dict[str, Any]) -> error_details_pb2.BadRequest:
    """A detail as buf curl prints it: the type's name and its bytes in unpadded base64."""
    assert detail["type"] == "google.rpc.BadRequest"
    value = detail["value"]
    return error_details_pb2.BadRequest.FromString(
        base64.b64decode(value + "=" * (-len(value) % 4)))


@pytest.mark.skipif(not BUF.exists(), reason=f"{BUF} is absent (`make lint` installs buf)")
def test_buf_curl_calls_through_either_reflection_protocol() -> None:
    """What a README tells a user to type. buf curl prints an error as Connect's JSON, where a
    detail stays base64 (connect-go decodes only types compiled into buf, never asking the
    server's reflection); the status message names the field and the problem in plain text."""
    def check(address: str) -> None:
        url = f"http://{address}/{SERVICE_NAME}/GetRedemptionHint"
        for protocol in ([], ["--reflect-protocol", "grpc-v1"],
                         ["--reflect-protocol", "grpc-v1alpha"]):
            listed = _buf_curl(*protocol, "--list-services", f"http://{address}")
            assert listed.returncode == 0, listed.stderr
            assert {SERVICE_NAME, *REFLECTION_SERVICES} <= set(listed.stdout.split())
            ok = _buf_curl(*protocol, "--data",
                           json.dumps({"memberId": str(MEMBER), "itemId": "11"}), url)
            assert ok.returncode == 0, (protocol, ok.stderr)
            hint = json.loads(ok.stdout)["hint"]
            assert (hint["itemId"], hint["pointsPrice"], hint["inStock"]) == ("11", "700", True)
            bad = _buf_curl(*protocol, "--data", '{"memberId": "1", "itemId": "0"}',
                            url)
            assert bad.returncode == grpc.StatusCode.INVALID_ARGUMENT.value[0] << 3, bad.stderr
            error = json.loads(bad.stderr)
            assert (error["code"], error["message"]) == ("invalid_argument", UNSET_ITEM)
            violation, = _bad_request(error["details"][0]).field_violations
            assert (violation.field, violation.description) == (
                "item_id", "must be set: ids start at 1, got 0")

    _serve(check)
