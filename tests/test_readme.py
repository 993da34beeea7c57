"""Every Python block of the README runs as written, from the repository root, against what is shipped
(the reference MLLM and the committed export): a new user copies them first."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path):
    # paths are the README's own (relative to the root); anything a block writes goes to /tmp
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"README block failed:\n{code}\n{r.stderr[-3000:]}"


def test_readme_quotes_only_figures_a_test_checks_and_cites_benchmark_sections_that_exist():
    # the shipped export's figures go stale when it is regenerated: the README quotes train.py's headline
    # for it, checked here against its config.json, and points to BENCHMARKS.md for everything else
    from predictor.training.export import headline

    readme, benchmarks = (ROOT / "README.md").read_text(), (ROOT / "BENCHMARKS.md").read_text()
    line = headline(ROOT / "checkpoints" / "predictor-reference").replace(str(ROOT), "<clone>")
    assert f"`{line}`" in readme
    cited = re.findall(r'BENCHMARKS\.md`?,[^"]*\("([^"]+)"\)', readme)
    assert cited and all(re.search(rf"^#+ {re.escape(c)}", benchmarks, re.M) for c in cited), cited
    # no retained-accuracy figure of the shipped predictor (e.g. "keeps 100 / 100 / 96.4%")
    assert not re.search(r"keeps \d+(\.\d)? / \d+(\.\d)? / \d+(\.\d)?%", readme)
