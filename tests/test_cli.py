"""The `recsvc` command a new user meets first: every command listed without importing the
job modules, `recsvc client` light and its options checked before any call is made.

How fast it starts is measured by bench/bench_cli.py, never asserted here."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recsvc import cli
from recsvc.config import load_programme
from recsvc.defaults import DEFAULT_RECOMMENDATIONS, GRPC_ADDRESS
from recsvc.settings import load_settings

HEAVY = ("numpy", "pandas", "pyarrow", "feast", "lightgbm", "sklearn", "prometheus_client",
         "pydantic")


def client_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser(["client"]).parse_args(["client", *argv])


def test_the_command_table_is_what_the_modules_register() -> None:
    """COMMANDS repeats each module's command names and one-line help, so `recsvc --help`
    imports none of them: the copy must stay true."""
    registered: dict[str, tuple[str, str]] = {}
    for module in dict.fromkeys(module for module, _ in cli.COMMANDS.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        registered |= {action.dest: (module, str(action.help)) for action in sub._choices_actions}
    assert registered == cli.COMMANDS


@pytest.mark.parametrize("script, command", [("train.py", "train"), ("retrain.py", "retrain")])
def test_the_training_entry_points_run_the_recsvc_jobs(script: str, command: str) -> None:
    """training/ holds the batch training entry points: each is its `recsvc` command, options
    and all (an unknown option is refused as the command refuses it)."""
    root = Path(__file__).resolve().parent.parent
    ran = subprocess.run([sys.executable, str(root / "training" / script), "--help"],
                         capture_output=True, text=True, check=True, timeout=60)
    usage = subprocess.run([sys.executable, "-m", "recsvc.cli", command, "--help"],
                           capture_output=True, text=True, check=True, timeout=60).stdout
    assert ran.stdout == usage and f"usage: recsvc {command}" in usage
    refused = subprocess.run([sys.executable, str(root / "training" / script), "--no-such"],
                             capture_output=True, text=True, check=False, timeout=60)
    assert refused.returncode == 2 and "unrecognized arguments: --no-such" in refused.stderr


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    for name, (_, help_) in cli.COMMANDS.items():
        assert f"{name} {help_}" in out, name


def test_the_command_is_found_after_the_options() -> None:
    assert cli.command_named(["-v", "client", "--address", "x", "churn", "1"]) == ["client"]
    assert cli.command_named(["--help"]) == []
    args = cli.build_parser(cli.command_named(["-v", "client", "churn", "1"])).parse_args(
        ["-v", "client", "churn", "1"])
    assert args.verbose and args.call == "churn" and args.member_ids == [1]


def test_the_client_path_stays_light() -> None:
    """Building and parsing the client's command line, and making a call, load none of the
    heavy libraries (a call against a closed port: refused, so no server is needed)."""
    script = textwrap.dedent(f"""
        import socket, sys
        from recsvc import cli
        from recsvc.transport import client
        cli.build_parser([]).format_help()
        parser = cli.build_parser(["client"])
        parser.parse_args(["client", "recommend", "1", "--limit", "5", "--category", "toys"])
        parser.parse_args(["client", "cart", "1", "7:1000:2", "8:500:1:cash"])
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        code = cli.main(["client", "--address", f"127.0.0.1:{{port}}", "--timeout", "2",
                         "hint", "1", "2"])
        assert code == 1, code
        loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
        assert not loaded, loaded
        jobs = sorted(m for m, _ in cli.COMMANDS.values() if m in sys.modules)
        assert jobs == ["recsvc.transport.client"], jobs
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "GetRedemptionHint: UNAVAILABLE" in done.stdout


@pytest.mark.parametrize("limit", ["0", "201", "-3", "ten"])
def test_a_limit_out_of_range_is_a_usage_error(limit: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["client", "recommend", "1", "--limit", limit])
    assert exited.value.code == 2
    assert "argument --limit:" in capsys.readouterr().err


def test_the_limit_defaults_to_the_servers_default_and_takes_its_range() -> None:
    assert client_args("recommend", "1").limit == DEFAULT_RECOMMENDATIONS == 20
    assert client_args("recommend", "1", "--limit", "1").limit == 1
    assert client_args("recommend", "1", "--limit", "200").limit == 200


def test_client_help_names_the_arms_the_limit_and_the_address(
        capsys: pytest.CaptureFixture[str]) -> None:
    arms = [arm.name for arm in load_programme().experiments.arms]
    for argv in (["client"], ["client", "recommend"]):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert all(arm in out for arm in arms), (argv, out)
    assert "1-200 (default 20)" in out
    with pytest.raises(SystemExit):
        cli.main(["client", "--help"])
    assert "$RECSVC_GRPC_ADDRESS or 127.0.0.1:50051" in " ".join(capsys.readouterr().out.split())


def test_the_client_calls_where_serve_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSVC_GRPC_ADDRESS", raising=False)
    assert client_args("churn", "1").address == load_settings().grpc_address == GRPC_ADDRESS
    monkeypatch.setenv("RECSVC_GRPC_ADDRESS", "10.0.0.9:6000")
    assert client_args("churn", "1").address == load_settings().grpc_address == "10.0.0.9:6000"
    assert client_args("--address", "h:1", "churn", "1").address == "h:1"
