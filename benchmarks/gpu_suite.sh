#!/usr/bin/env bash
# The GPU suite of issue 16 in one command (see benchmarks/bench_gpu_suite.py for what it measures):
#   benchmarks/gpu_suite.sh                                        # 7B shapes, bf16, one CUDA GPU
#   benchmarks/gpu_suite.sh --size tiny --device cpu --out /tmp/s  # the CPU check the tests run
# It runs from a plain checkout (no `pip install -e .` needed) with whatever torch the machine has; it
# needs transformers at the version of pyproject.toml (BENCHMARKS.md: bringing wheels to a GPU machine).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py="${PYTHON:-python}"  # the interpreter to run (the tests pass theirs: a venv need not be on PATH)
"$py" - <<'PY'
import platform, torch, transformers
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, GPU {gpu}")
PY
exec "$py" "$root/benchmarks/bench_gpu_suite.py" "$@"
