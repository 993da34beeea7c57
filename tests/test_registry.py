"""predictor.registry: one lazy name -> object registry for adapters, explainers, sources and the runtime's
pruning methods. Family modules are imported on first lookup, so importing a registry stays light."""
import subprocess
import sys
import types

import pytest

from predictor.registry import Registry


@pytest.fixture
def family_module(monkeypatch):
    """A module `_reg_family` that registers 'b' in the registry it is handed, counting its imports."""
    reg = Registry("widget", modules=("_reg_family",))
    imports = []

    class Finder:  # imports `_reg_family` from nothing, as a family module would register itself
        def find_spec(self, name, path=None, target=None):
            if name != "_reg_family":
                return None
            import importlib.util

            return importlib.util.spec_from_loader(name, self)

        def create_module(self, spec):
            return types.ModuleType(spec.name)

        def exec_module(self, module):
            imports.append(module.__name__)
            reg.register("b")(object)

    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "_reg_family", raising=False)
    return reg, imports


def test_modules_are_imported_on_first_lookup_only(family_module):
    reg, imports = family_module
    reg.register("a")(int)
    assert imports == []  # registering and constructing import nothing
    assert reg.get("a") is int and imports == ["_reg_family"]
    assert reg.get("b") is object and reg.names() == ["a", "b"] and "b" in reg and list(reg) == ["a", "b"]
    assert imports == ["_reg_family"]


@pytest.mark.parametrize("first", ["names", "contains", "iter", "get"])
def test_every_kind_of_lookup_sees_the_family_modules(family_module, first):
    reg, _ = family_module
    seen = {"names": lambda: reg.names(), "contains": lambda: ["b"] if "b" in reg else [],
            "iter": lambda: list(reg), "get": lambda: ["b"] if reg.get("b") else []}[first]()
    assert seen == ["b"]


def test_unknown_name_lists_the_available_ones_and_twice_registered_is_refused():
    reg = Registry("widget")
    reg.register("a")(int)
    with pytest.raises(KeyError, match=r"unknown widget 'z'; available: a"):
        reg.get("z")
    with pytest.raises(KeyError, match="'a' is registered twice"):
        reg.register("a")(float)


def test_a_missing_dependency_of_a_family_module_is_said():
    reg = Registry("widget", modules=("_no_such_family_module",))
    with pytest.raises(ModuleNotFoundError, match="_no_such_family_module"):
        reg.names()


@pytest.mark.parametrize("module,registry,expected", [
    ("predictor.adapters", "ADAPTERS", ["llava_onevision", "llava_onevision1_5", "qwen2_vl", "qwen3_5", "qwen3_vl",
                                        "vila"]),
    ("data_gen.explainers", "EXPLAINERS", ["attention", "gae", "ground_truth", "input_x_gradient",
                                           "integrated_gradients"]),
    ("data_gen.sources", "SOURCES", ["hf_dataset", "jsonl", "llava_json", "synthetic_scenes", "synthetic_video"]),
    ("predictor.runtime", "METHODS", ["attention", "cluster", "downsample", "oracle", "predictor", "random"]),
])
def test_each_registry_lists_its_parts_in_a_fresh_process_without_heavy_imports(module, registry, expected):
    """No `get_*` call first: the registry itself imports its modules, and none of them imports
    transformers, datasets, captum or Lightning to register."""
    code = (f"import sys\nfrom {module} import {registry} as r\nprint(list(r.names()))\n"
            "print(sorted(k for k in ('transformers', 'datasets', 'captum', 'lightning', 'pytorch_lightning') "
            "if k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == [str(expected), "[]"]


def test_runtime_methods_build_from_the_registry():
    from predictor.runtime import METHODS, ClusterAggregation, RandomScores, make_method

    assert isinstance(METHODS, Registry)
    assert isinstance(make_method("random", seed=3), RandomScores) and make_method("random", seed=3).seed == 3
    assert isinstance(make_method("cluster", seed=2), ClusterAggregation) and make_method("downsample") is None
    with pytest.raises(KeyError, match="unknown pruning method 'nope'; available: attention, cluster, downsample"):
        make_method("nope")
    with pytest.raises(ValueError, match="predictor=<export dir>"):
        make_method("predictor")
    with pytest.raises(ValueError, match="explainer callable"):
        make_method("oracle")
