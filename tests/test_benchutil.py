"""Where the benchmark scripts write (bench/benchutil.py): only a run with every option at its
default writes the committed bench/results/; any other run writes elsewhere unless --out says."""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_benchutil() -> ModuleType:
    """bench/ is no package: the scripts import benchutil as a sibling; load it by path."""
    spec = importlib.util.spec_from_file_location("benchutil", ROOT / "bench" / "benchutil.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchutil = _load_benchutil()
COMMITTED, SCRATCH = Path("/repo/bench/results"), Path("/tmp/scratch")


def _parser() -> argparse.ArgumentParser:
    """The shape of the scripts' parsers: sizes defaulting to None (filled in after parsing),
    flags, lists and a --out defaulting to None."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", default="")
    parser.add_argument("--out", type=Path, default=None, help=benchutil.OUT_HELP)
    return parser


def _where(*argv: str) -> Path:
    parser = _parser()
    args = parser.parse_args(argv)
    return benchutil.results_dir(args.out, benchutil.changed_options(parser, args),
                                 committed=COMMITTED, scratch=SCRATCH)


def test_only_a_run_with_every_option_at_its_default_writes_the_committed_results() -> None:
    assert _where() == COMMITTED


@pytest.mark.parametrize("argv", [["--quick"], ["--rows", "echo,hint_500"], ["--members", "3000"],
                                  ["--duration", "3"], ["--no-redis"]])
def test_any_other_run_writes_elsewhere(argv: list[str]) -> None:
    assert _where(*argv) == SCRATCH


def test_an_explicit_out_always_wins() -> None:
    assert _where("--quick", "--out", "mine") == Path("mine")
    assert _where("--out", str(COMMITTED)) == COMMITTED


def test_the_changed_options_are_named_as_flags_out_aside() -> None:
    parser = _parser()
    args = parser.parse_args(["--quick", "--members", "3000", "--out", "x", "--duration", "15"])
    assert benchutil.changed_options(parser, args) == ["--members", "--quick"]


def test_ad_hoc_runs_go_to_a_folder_of_the_users_own_under_the_temporary_directory(
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    out = benchutil.choose_out(parser, parser.parse_args(["--quick"]))
    assert out == Path(tempfile.gettempdir()) / f"recsvc-bench-{os.getuid()}"
    assert f"ad-hoc run (--quick): results go to {out}" in capsys.readouterr().out
    assert benchutil.choose_out(parser, parser.parse_args([])) == \
        ROOT / "bench" / "results" == benchutil.RESULTS
    assert capsys.readouterr().out == ""


def test_sizes_go_to_an_empty_data_dir_only(tiny_data_dir: Path, tmp_path: Path) -> None:
    """A kept data directory is benchmarked as it is: asking it for a size would be refused."""
    assert benchutil.population(tmp_path / "empty", members=5, days=9) == {"members": 5, "days": 9}
    assert benchutil.population(tiny_data_dir, members=5, days=9) == {}


def test_a_killed_benchmark_runs_its_finally_blocks(tmp_path: Path) -> None:
    # what a bench started (servers, a Redis Cluster's nodes) is stopped when it is killed
    import signal
    import subprocess
    import sys

    done = tmp_path / "cleaned"
    script = (f"import os, signal, sys, time; sys.path.insert(0, {str(ROOT / 'bench')!r})\n"
              "import benchutil; benchutil.exit_on_sigterm()\n"
              "try:\n    print('ready', flush=True); time.sleep(30)\n"
              f"finally:\n    open({str(done)!r}, 'w').close()\n")
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                          text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM and done.exists()
