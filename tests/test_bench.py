"""The benchmark scripts keep running: each one's smallest configuration, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_throughput_runs_its_smallest_configuration_and_says_what_it_measured(samples, tmp_path):
    """bench/throughput.py on 8 bundled photos, the preloaded default recipe only: a rate, a first
    epoch, the step's FLOPs, and labels that name the recipe it ran (not another decoder's)."""
    out = tmp_path / "throughput.json"
    r = subprocess.run([sys.executable, str(BENCH / "throughput.py"), "--device", "cpu", "--data", str(samples / "train"),
                        "--images", "8", "--epochs", "2", "--variants", "c", "--json", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    c = result["results"]["c"]
    assert c["images_per_s"] > 0 and c["first_epoch_s"] > 0 and c["preloaded"] and c["batch_size"] == 16
    assert result["step_gflop_per_image"] > 1 and result["matmul_peak_tflops"] > 0
    assert "(c) default recipe, preloaded on the device" in r.stdout
