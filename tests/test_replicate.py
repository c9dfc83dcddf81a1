"""Smoke test of the replication study: `benchmarks/replicate.py --quick` runs every method and ablation."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_replication_runs_every_method(tmp_path):
    output = tmp_path / "replication.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "replicate.py"), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(output.read_text())["runs"]
    methods = {(run["task"], run["method"]) for run in runs}
    assert len(runs) == len(methods) == 9
    assert ("demo-3d", "Med-SA paper + SD-Trans") in methods and ("demo-2d", "zero-shot") in methods
    assert all(0 <= run["dice"] <= 1 and run["per_case"] for run in runs)
    trainable = {run["method"]: run["trainable_parameters"] for run in runs}
    assert trainable["zero-shot"] == 0
    assert (
        0 < trainable["Med-SA encoder-only"] < trainable["Med-SA paper"] < trainable["Med-SA official-code"]
    )
    assert "| Med-SA paper, plain prompt fusion |" in result.stdout
