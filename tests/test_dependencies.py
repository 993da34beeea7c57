"""Every third-party module the packages import is declared by the extra that needs it, and nothing is declared
that nothing imports.

The imports are read from the source (every `import`, lazy ones in functions too, and the modules a `Registry`
loads by name), followed through our own modules from each extra's entry modules. Each extra must declare what
its closure imports beyond what core and the extras it includes declare; a declared distribution that no
closure imports needs a reason in RUNTIME_ONLY.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = ("predictor", "data_gen", "evaluation", "reference_mllm")
SELF = "relevance-predictor"
# import name -> distribution for modules that may not be installed here (lmms-eval is installed with --no-deps)
KNOWN = {"lmms_eval": "lmms-eval", "torchcodec": "torchcodec", "PIL": "pillow", "yaml": "pyyaml"}
# declared but imported by no module of ours, each for a reason
RUNTIME_ONLY = {
    "torchvision": "transformers' video processors and fast image processors import it",
    "import-linter": "its lint-imports command checks the layer contracts in pyproject.toml (.ci/run)",
}


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _modules() -> dict[str, Path]:
    files = [f for pkg in OWN for f in (ROOT / pkg).rglob("*.py")] + [ROOT / "train.py", ROOT / "eval.py"]
    out = {}
    for f in files:
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(third-party top-level names, our module names) that module `name` imports anywhere in its body."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    third, own = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry":
            # Registry(kind, modules=("predictor.adapters.qwen2_vl", ...)): imported by name on first lookup
            names = [c.value for kw in node.keywords if kw.arg == "modules" for c in ast.walk(kw.value)
                     if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        else:
            continue
        for mod in names:
            top = mod.split(".")[0]
            if top in OWN:  # the module and every package above it run
                parts = mod.split(".")
                own |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & MODULES.keys()
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third, own


def closure(entries: list[str]) -> set[str]:
    """Distributions imported by `entries` and everything of ours they import."""
    seen, third, todo = set(), set(), list(entries)
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            t, o = _imports(mod)
            third |= t
            todo += o - seen
    dists = packages_distributions()
    return {_norm(KNOWN.get(t) or dists[t][0]) for t in third}


def _under(*prefixes: str) -> list[str]:
    return [m for m in MODULES if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))]


# what each extra serves: its entry modules (core: the library's top-level modules, no CLI)
ENTRIES = {
    "core": [m for m in MODULES if m.startswith("predictor") and MODULES[m].parent == ROOT / "predictor"
             and m != "predictor.cli"],
    "data_gen": _under("data_gen", "predictor.adapters", "reference_mllm"),  # the reference MLLMs: data_gen's stack
    "train": _under("predictor.training", "predictor.cli", "train"),
    "eval": _under("evaluation", "eval", "predictor.runtime"),
    "lmms": _under("predictor.integrations"),
}


def _declared() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(extra -> its own distributions, extra -> the extras it includes); "core" is [project] dependencies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lists = {"core": project["dependencies"], **project["optional-dependencies"]}
    own, includes = {}, {}
    for extra, reqs in lists.items():
        names = [re.match(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?", r) for r in reqs]
        own[extra] = {_norm(m.group(0)) for m in names if _norm(m.group(0).split("[")[0]) != SELF}
        includes[extra] = {x.strip() for m in names if m.group(0).startswith(SELF) for x in m.group(1)[1:-1].split(",")}
    return own, includes


def _installs(extra: str, own, includes) -> set[str]:
    got = set(own["core"]) | own[extra]
    for inner in includes.get(extra, ()):
        got |= _installs(inner, own, includes)
    return got


def test_each_extra_declares_what_its_code_imports():
    own, includes = _declared()
    for extra, entries in ENTRIES.items():
        # an optional extra's modules are imported lazily, where a missing one is refused with its install line
        missing = closure(entries) - _installs(extra, own, includes) - own["video"]
        assert not missing, f"[{extra}] imports {sorted(missing)} but does not declare them (pyproject.toml)"
    video = closure(_under("predictor.media")) - _installs("data_gen", own, includes)
    assert video == own["video"], "the [video] extra is what video decoding imports beyond [data_gen]"


def test_nothing_is_declared_that_nothing_imports():
    own, includes = _declared()
    used = set().union(*(closure(e) for e in ENTRIES.values()))
    tests = closure_of_tests()
    for extra, dists in own.items():
        unused = {d.split("[")[0] for d in dists} - used - set(RUNTIME_ONLY) - (tests if extra == "dev" else set())
        assert not unused, f"[{extra}] declares {sorted(unused)}, which no module imports"


def test_each_distribution_is_declared_once_on_each_install_path():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra, reqs in {"core": project["dependencies"], **project["optional-dependencies"]}.items():
        names = [_norm(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in reqs]
        assert len(names) == len(set(names)), f"[{extra}] declares {sorted({n for n in names if names.count(n) > 1})} twice"
    own, includes = _declared()
    for extra in own:
        if extra == "core":
            continue
        again = own[extra] & own["core"]
        assert not again, f"[{extra}] declares {sorted(again)} again; [project] dependencies already do"
        for inner in includes.get(extra, ()):
            again = own[extra] & _installs(inner, own, includes)
            assert not again, f"[{extra}] declares {sorted(again)} again; [{inner}], which it includes, does"


def test_eval_installs_what_evaluation_imports_and_no_more():
    own, includes = _declared()
    needed = closure(ENTRIES["eval"]) | closure(ENTRIES["data_gen"]) - {"torchcodec"}
    extra = _installs("eval", own, includes) - set(RUNTIME_ONLY)
    assert extra - needed == set(), f"[eval] installs {sorted(extra - needed)}, which evaluation does not use"


def closure_of_tests() -> set[str]:
    """Distributions the tests import (the [dev] extra's own)."""
    dists, names = packages_distributions(), set()
    for f in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    third = {n for n in names if n not in sys.stdlib_module_names and n not in OWN and (n in KNOWN or n in dists)}
    return {_norm(KNOWN.get(n) or dists[n][0]) for n in third}


def test_the_checker_sees_lazy_and_registry_imports():
    """The rules above are only as good as the import reader: it must see an import inside a function and the
    adapter modules the registry loads by name (the adapters import transformers only there)."""
    assert "huggingface-hub" in closure(["predictor.hub"])  # imported inside functions only
    assert "transformers" in closure(["predictor.adapters"])  # through ADAPTERS' modules=(...)
    assert "pytorch-lightning" not in closure(ENTRIES["core"])
