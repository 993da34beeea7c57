"""Every Python block of the README and of docs/*.md runs as written, from the repository root, against what
is shipped (the reference MLLM and the committed export): a new user copies them first."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [(f"{doc.relative_to(ROOT)}:{i}", code) for doc in DOCS
          for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.S | re.M))]


def test_the_readme_and_docs_have_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
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
    docs = "\n".join(doc.read_text() for doc in DOCS)
    cited = re.findall(r'BENCHMARKS\.md`?,[^"]*\("([^"]+)"\)', docs)
    assert cited and all(re.search(rf"^#+ {re.escape(c)}", benchmarks, re.M) for c in cited), cited
    # no retained-accuracy figure of the shipped predictor (e.g. "keeps 100 / 100 / 96.4%")
    assert not re.search(r"keeps \d+(\.\d)? / \d+(\.\d)? / \d+(\.\d)?%", docs)


def test_the_readme_and_docs_name_no_internal_issue():
    # development history lives in BENCHMARKS.md and git; the user-facing pages state what holds
    for doc in DOCS:
        assert not re.search(r"\bissues? \d", doc.read_text(), re.I), doc
