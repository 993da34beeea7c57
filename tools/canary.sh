#!/usr/bin/env bash
# The canary: the whole suite in a brand-new venv on the newest release of every dependency, pyproject's caps
# lifted, so that we meet a new transformers (or pytest, huggingface_hub, ...) before our users do. CI stays on
# requirements/lock.txt; run this before resolving an issue that touches adapters or dependencies, and put the
# versions and counts it prints in the issue note.
#   tools/canary.sh                  newest releases of everything
#   tools/canary.sh --floor          the oldest transformers pyproject allows (the floor must pass too)
#   tools/canary.sh -- -k adapters   arguments after -- go to pytest
# CANARY_DIR=<dir> keeps the venv there (default: a new temporary folder, removed at the end).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
floor=0
while [ $# -gt 0 ]; do
  case "$1" in
    --floor) floor=1; shift ;;
    --) shift; break ;;
    *) echo "usage: tools/canary.sh [--floor] [-- pytest args]" >&2; exit 2 ;;
  esac
done
dir="${CANARY_DIR:-$(mktemp -d -t canary.XXXXXX)}"
[ -n "${CANARY_DIR:-}" ] || trap 'rm -rf "$dir"' EXIT
py="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
"$py" -m venv "$dir/venv"
pip=("$dir/venv/bin/python" -m pip install -q)
cd "$root"
# every distribution pyproject names (core and all extras but [lmms], which is installed the README's way below)
mapfile -t deps < <("$dir/venv/bin/python" - <<'PY'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
reqs = p["dependencies"] + [r for k, v in p["optional-dependencies"].items() if k != "lmms" for r in v]
names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in reqs}
print("\n".join(sorted(n for n in names if n.lower() != "relevance-predictor")))
PY
)
"${pip[@]}" --upgrade torch torchvision  # newest the index serves (a machine-wide pip cap may hold them back)
"${pip[@]}" --no-deps -e .
# what lmms-eval imports: the lines of requirements/lock.in after its "# lmms-eval" comment, unpinned there
mapfile -t lmms < <(awk '/^# lmms-eval/{on=1} on && !/^#/ {sub(/#.*/, ""); gsub(/ /, ""); if ($0 != "") print}' \
  requirements/lock.in)
"${pip[@]}" --upgrade "${deps[@]}" "${lmms[@]}"
"${pip[@]}" --upgrade --no-deps lmms-eval
if [ "$floor" = 1 ]; then
  low=$(grep -oE '"transformers>=[0-9.]+' pyproject.toml | cut -d= -f2)
  "${pip[@]}" "transformers==$low"
fi
echo "== canary ($([ $floor = 1 ] && echo "floor: transformers $low" || echo newest)): versions"
"$dir/venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE \
  '^(torch|torchvision|transformers|tokenizers|kernels|huggingface[-_]hub|pytorch-lightning|torchmetrics|webdataset|hydra-core|omegaconf|captum|datasets|safetensors|numpy|pillow|wandb|pytest|lmms[-_]eval|filelock)==' \
  | tr '\n' ' '; echo
"$dir/venv/bin/python" -m pip check || echo "(pip check: lmms-eval's own pins, and pyproject's caps lifted on purpose)"
echo "== canary: tests"
"$dir/venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
