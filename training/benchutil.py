"""What the benchmark scripts share: a description of the machine they ran on."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def save_results(out_dir: Path, name: str, result: dict[str, Any],
                 render: Callable[[dict[str, Any]], str]) -> None:
    """Stamp the finish time, render the Markdown, write `<name>.json` and `<name>.md` under
    out_dir, print the table and where it went."""
    result["finished"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    markdown = render(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out_dir / f"{name}.md").write_text(markdown, encoding="utf-8")
    print()
    print(markdown)
    print(f"wrote {out_dir / f'{name}.json'} and {out_dir / f'{name}.md'}")
