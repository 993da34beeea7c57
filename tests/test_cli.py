"""The three commands as a new user meets them: --help, a typo in a key, a user error, thread defaults."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from predictor import threads
from predictor.cli import check_overrides

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# entry -> (command, config folder, config name)
ENTRIES = {
    "data_gen": (["-m", "data_gen"], CONF, "data_gen"),
    "train": ([str(ROOT / "train.py")], CONF / "train", "train"),
    "eval": ([str(ROOT / "eval.py")], CONF, "eval"),
}


def run(entry: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *ENTRIES[entry][0], *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


# --- 4: unknown keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("entry, override, closest", [
    ("train", "trainer.max_epoch=1", "trainer.max_epochs"),
    ("train", "+trainer.max_epoch=1", "trainer.max_epochs"),  # Hydra's own hint: an addition it would accept
    ("train", "model.kernel_siz=3", "model.kernel_size"),
    ("train", "data.shard=/x", "data.shards"),
    ("data_gen", "max_item=3", "max_items"),
    ("data_gen", "source=jsonl source.pth=/x.jsonl", "source.path"),  # the keys of the source chosen
    ("eval", "fidelity.shard=/x", "fidelity.shards"),
    ("eval", "~max_item", "max_items"),
])
def test_unknown_key_names_the_closest(entry, override, closest):
    _, conf, name = ENTRIES[entry]
    with pytest.raises(KeyError, match=f"did you mean {re.escape(closest)}\\?"):
        check_overrides(conf, name, override.split(), {})


def test_keys_of_the_chosen_group_and_open_additions_pass():
    check_overrides(CONF / "train", "train", ["model=conv2d", "model.kernel_size=5", "+trainer.accumulate_grad_batches=2",
                                              "hydra.run.dir=/x", "logger=csv"],
                    {"trainer": lambda: ["accumulate_grad_batches"]})  # train.py: Lightning Trainer's arguments
    check_overrides(CONF, "eval", ["source=jsonl", "source.path=/x.jsonl", "+generalisation.scales.big.sizes=[[448,448]]",
                                   "max_items=3"], {"generalisation.scales": None})
    with pytest.raises(KeyError, match="model.kernel_size"):  # conv2d's keys, not another group option's
        check_overrides(CONF / "train", "train", ["model=conv2d", "model.kernel_siz=5"], {})
    # an allowed addition does not narrow what the keys after it are checked against
    check_overrides(CONF / "train", "train", ["+trainer.accumulate_grad_batches=2", "seed=3"],
                    {"trainer": lambda: ["accumulate_grad_batches"]})


@pytest.mark.parametrize("entry, override, closest", [
    ("train", "trainer.max_epoch=1", "trainer.max_epochs"),
    ("data_gen", "max_item=3", "max_items"),
    ("eval", "fidelity.shard=/x", "fidelity.shards"),
])
def test_entry_refuses_an_unknown_key_before_any_work(tmp_path, entry, override, closest):
    r = run(entry, override, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: unknown key {override.split('=')[0]} in the override {override!r}; did you mean {closest}? "
        f"(--help lists the main options; --cfg job prints them all)"]
    assert not (tmp_path / "outputs").exists()


# --- 5: user errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("entry, args, says", [
    ("data_gen", ["model.path=missing"], "missing"),
    ("train", ["data.shards=missing", "logger=none"], "No shards found for data.shards=missing"),
    ("eval", ["predictor=missing"], "predictor 'missing'"),
])
def test_user_error_is_one_line_and_leaves_no_run_folder(tmp_path, entry, args, says):
    r = run(entry, *args, cwd=tmp_path)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]  # (after progress bars of the model loading, if any)
    assert last.startswith("error: ") and says in last and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "outputs").exists()  # Hydra's run folder held only its own records: removed
    if entry == "eval":
        full = run(entry, *args, cwd=tmp_path, HYDRA_FULL_ERROR="1")
        assert full.returncode == 1 and "Traceback" in full.stderr and says in full.stderr


# --- 3: help --------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ENTRIES)
def test_help_says_what_the_entry_does_with_its_own_groups_and_true_defaults(tmp_path, entry):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    text = run(entry, "--help", cwd=tmp_path).stdout
    assert "Powered by Hydra" not in text and "== Config groups ==" not in text
    _, conf, name = ENTRIES[entry]
    own = {next(iter(d)) if isinstance(d, dict) else None
           for d in yaml.safe_load((conf / f"{name}.yaml").read_text())["defaults"]}
    own = {g.removeprefix("optional ") for g in own if g} - {"eval_source"}  # picked by the source
    groups = dict(re.findall(r"^  (\w+)=(\w+) ", text.split("Groups")[1].split("Main options")[0], re.M))
    assert set(groups) == own
    assert all((conf / g / f"{choice}.yaml").is_file() for g, choice in groups.items())
    options = re.findall(r"^  ([\w.]+)=(\S+)", text.split("Main options")[1], re.M)
    assert len(options) >= 8
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(name), resolve=False)
    for key, value in options:
        if "<" in value:  # a date in the default
            continue
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert yaml.safe_load(value.replace(",", ", ")) == node, key


# --- 2: threads -----------------------------------------------------------------------------------
def test_threads_come_from_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("250000 100000\n")  # a container granted 2.5 CPUs
    assert threads.cgroup_cpus(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpus(tmp_path) is None
    assert threads.cgroup_cpus(tmp_path / "none") is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: 2.5)
    assert threads.available_cpus() == 3
    monkeypatch.setattr(threads, "cgroup_cpus", lambda: None)
    assert threads.available_cpus() == 8


def test_entry_sets_thread_defaults_before_torch_loads_and_keeps_the_users():
    code = ("import os, sys\nos.sched_setaffinity(0, {0})\nsys.argv = ['x']\n"
            "from pathlib import Path\nfrom predictor.cli import entry\n"
            "entry(lambda: print(os.environ['OMP_NUM_THREADS'], os.environ['OMP_WAIT_POLICY'], "
            f"os.environ['TOKENIZERS_PARALLELISM'], 'torch' in sys.modules), Path({str(CONF)!r}), 'data_gen')")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.split() == ["1", "PASSIVE", "false", "False"], r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"})
    assert r.stdout.split()[:2] == ["3", "ACTIVE"], r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "OMP_NUM_THREADS": "many"})
    assert r.returncode == 1 and r.stderr.startswith("error: OMP_NUM_THREADS='many': expected a positive number")


# --- 8: the README's test commands select something -----------------------------------------------
def test_readme_names_no_marker_that_selects_no_test():
    readme = (ROOT / "README.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for marker in re.findall(r"pytest -m (\w+)", readme):
        assert f"mark.{marker}" in tests, f"README runs `pytest -m {marker}` but no test is marked {marker}"
