"""The recsvc.v1 contract: generated code is current, and the service has its six RPCs."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

from recsvc.v1 import recsvc_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO = "recsvc/v1/recsvc.proto"
GENERATED = ("recsvc_pb2.py", "recsvc_pb2.pyi", "recsvc_pb2_grpc.py")


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main([sys.argv[0], f"-I{ROOT / 'protos'}", f"-I{include}",
                      f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                      f"--grpc_python_out={tmp_path}", str(ROOT / "protos" / PROTO)])
    assert rc == 0
    for name in GENERATED:
        fresh = (tmp_path / "recsvc" / "v1" / name).read_bytes()
        committed = (ROOT / "src" / "recsvc" / "v1" / name).read_bytes()
        assert fresh == committed, f"src/recsvc/v1/{name} is stale: run `make proto`"


def test_the_service_answers_every_caller() -> None:
    service = recsvc_pb2.DESCRIPTOR.services_by_name["RedemptionService"]
    assert [m.name for m in service.methods] == [
        "GetRedemptionHint", "BatchGetRedemptionHints", "RecommendRedemptions",
        "OptimizeCartSplit", "GetChurnRisk", "BatchGetChurnRisk", "GetNudges"]
    assert recsvc_pb2.DESCRIPTOR.package == "recsvc.v1"


def test_money_and_points_are_integers_never_floats() -> None:
    """SPEC §7: every money or points field is an int64."""
    int64 = 3  # FieldDescriptor.TYPE_INT64
    checked = 0
    for message in recsvc_pb2.DESCRIPTOR.message_types_by_name.values():
        for field in message.fields:
            words = field.name.split("_")
            is_points = "points" in words and field.type != 8  # 8: TYPE_BOOL (a flag about points)
            if field.message_type is None and (words[-1] == "minor" or is_points):
                assert field.type == int64, f"{message.name}.{field.name}"
                checked += 1
    assert checked > 20


def test_the_core_reasons_carry_the_contracts_numbers() -> None:
    from recsvc.core.redemption import Reason
    from recsvc.v1 import recsvc_pb2 as pb

    # the converters send Reason.value as the ReasonCode: one list, the same numbers
    assert {r.name: r.value for r in Reason} == {
        name.removeprefix("REASON_CODE_"): number for name, number in pb.ReasonCode.items()
        if number}
