"""Write a benchmark's results: bench/results/NAME.json and its section of docs/benchmarks.md.

Each benchmark owns the part of docs/benchmarks.md between ``<!-- bench:NAME -->`` markers, so
benchmarks can be rerun one at a time without clobbering each other.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery number here is written by a script in bench/ (`make bench` runs them all).\n"


def machine() -> dict[str, str | int | float]:
    """What the numbers were measured on."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = match[1].strip() if match else cpu
    mem_kb = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        match = re.search(r"MemTotal:\s*(\d+)", meminfo.read_text())
        mem_kb = int(match[1]) if match else 0
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "memory_gib": round(mem_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def busy_cores(seconds: float = 2.0) -> float:
    """How many cores other processes keep busy right now (from /proc/stat; 0 where there is none)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return 0.0

    def sample() -> tuple[int, int]:
        values = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return (1 - (idle1 - idle0) / max(total1 - total0, 1)) * (os.cpu_count() or 1)


def write(
    name: str,
    command: str,
    conditions: Mapping[str, str | int | float],
    results: Mapping[str, float],
    ratios: Mapping[str, float],
    summary: str,
) -> None:
    """Save the JSON result and replace this benchmark's section of docs/benchmarks.md."""
    record = {
        "benchmark": name,
        "command": command,
        "machine": machine(),
        "conditions": dict(conditions),
        "results": dict(results),
        "ratios": dict(ratios),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")

    m = record["machine"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in {**results, **ratios}.items())
    section = (
        f"<!-- bench:{name} -->\n## {name}\n\n{summary}\n\n"
        f"Command: `{command}`  \nMachine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}  \nConditions: "
        + ", ".join(f"{k}={v}" for k, v in conditions.items())
        + f"  \nMeasured: {record['measured_at']}\n\n| metric | value |\n|---|---|\n{rows}\n"
        f"<!-- /bench:{name} -->"
    )
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text.rstrip() + "\n")
