"""lmms-eval's model `relevance_pruned` (`pip install -e ".[lmms]"`): any adapter + an export, pruned generation.

    lmms-eval --model relevance_pruned --model_args model=qwen2_vl,model_path=<dir>,predictor=<export>,keep=0.25 ...

lmms-eval finds it through the entry-point group `lmms_eval.models` (pyproject.toml), which calls `manifest`
when lmms-eval starts; this module stays light so that lmms-eval's start does not load the model code.
"""


def manifest():
    """lmms-eval's registration record for `relevance_pruned` (a "simple" model: it gets the task's text and
    visuals, and applies the MLLM's chat template itself, through the adapter)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="relevance_pruned",
                         simple_class_path="predictor.integrations.lmms_eval.model.RelevancePruned")
