#!/usr/bin/env python
"""How long `medsa --help`, `medsa predict --help` and `medsa --version` take to answer (cold interpreter).

The command line imports torch, transformers and peft only inside the command that needs them, so the help
screens stay interactive (target: under 1.5 s on 2 CPU cores). Not a timed test: CI machines are shared, so
the figure comes from running this script on a quiet machine:

    python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["predict", "--help"], ["--version"])


def time_command(arguments: list[str], repeats: int) -> dict[str, float]:
    """Wall-clock seconds of `python -m peft_medsa.cli ARGUMENTS` in fresh interpreters (one warm-up first)."""
    command = [sys.executable, "-m", "peft_medsa.cli", *arguments]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(command, capture_output=True, check=True, env=environment)  # warm the file cache
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, env=environment)
        seconds.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(seconds), 3), "min_s": round(min(seconds), 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    record = {
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "commands": {" ".join(c): time_command(c, args.repeats) for c in COMMANDS},
    }
    print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
