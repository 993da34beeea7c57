"""`import predictor` stays light: no transformers, no Lightning (serving stacks install only torch); and the
packages import only downwards (docs/architecture.md)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code):
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_import_predictor_is_light():
    out = run("import sys, predictor, predictor.schema, predictor.model, predictor.metrics, predictor.targets, "
              "predictor.export, predictor.features\n"
              "print(sorted(k for k in ('transformers', 'lightning', 'pytorch_lightning', 'webdataset', 'wandb', "
              "'matplotlib', 'hydra') if k in sys.modules))")
    assert out == "[]"


def test_training_package_imports():
    # (pytorch_lightning -> torchmetrics imports transformers itself when it is installed; not ours)
    out = run("import sys, predictor.training\nprint('pytorch_lightning' in sys.modules)\n"
              "from predictor.training import PredictorModule\nprint('pytorch_lightning' in sys.modules)")
    assert out.split() == ["False", "True"]  # names load on first use


def test_evaluation_and_its_split_need_no_lightning(tmp_path):
    """eval's fidelity check reads shards and the training split without importing Lightning."""
    from synthetic_shards import write_synthetic_shards

    write_synthetic_shards(tmp_path, 20, grids=[(1, 4, 4)], samples_per_shard=20)
    out = run("import sys, torch, evaluation\n"
              "from evaluation.fidelity import fidelity\n"
              "from predictor.config import PredictorConfig\n"
              "from predictor.model import RelevancePredictor\n"
              f"res = fidelity(RelevancePredictor(PredictorConfig(widths=[4])), {str(tmp_path)!r}, 0.5, progress=False)\n"
              "print(res['predictor']['n'] > 0, 'pytorch_lightning' in sys.modules, 'lightning' in sys.modules)")
    assert out.split() == ["True", "False", "False"]


def test_packages_import_only_downwards():
    """pyproject's import-linter contracts (docs/architecture.md), run with the suite too: one source for the
    layers, lazy imports included; `.ci/run` also runs `lint-imports` on its own."""
    out = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout
