"""benchmarks/gpu_suite.sh at a tiny size on the CPU, so that the GPU suite cannot rot between GPU runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_suite_runs_on_the_cpu_at_tiny_size(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--size", "tiny", "--device", "cpu",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHON": sys.executable})  # this interpreter, on PATH or not
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch" in out.stdout and "transformers" in out.stdout  # the versions it ran with
    res = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert {r["method"] for r in res["label_generation"]} == {"reference", "loop", "batched"}
    assert all(r["samples_per_s"] > 0 and r["T"] == 3 for r in res["label_generation"])
    prefill = {(r["keep"], r["batch"]): r for r in res["prefill"]}
    assert set(prefill) == {(k, b) for k in (1.0, 0.5, 0.25) for b in (1, 2)}
    assert prefill[0.25, 1]["S"] < prefill[0.5, 1]["S"] < prefill[1.0, 1]["S"]
    assert prefill[0.25, 2]["kv_mib"] < prefill[1.0, 2]["kv_mib"] and prefill[1.0, 1]["score_ms"] > 0
    assert res["training"]["extrapolated_min"] > 0 and res["training"]["epochs"] == 100
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "gae batched" in table and "keep 25%" in table and "extrapolated" in table
