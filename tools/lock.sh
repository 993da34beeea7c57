#!/usr/bin/env bash
# Refresh requirements/lock.txt, the tested set that CI and the README's install use, from requirements/lock.in
# (pyproject's [dev] extras, the pinned torch pair, and what lmms-eval imports). Then: run the suite on the new
# lock in a brand-new venv (docs/dependencies.md), and commit the lock with the figures.
#   tools/lock.sh                     newest versions pyproject's ranges allow
#   tools/lock.sh --upgrade-package transformers    only move one package (uv's options pass through)
set -euo pipefail
cd "$(dirname "$0")/.."
if python -m uv --version >/dev/null 2>&1; then uv=(python -m uv); elif command -v uv >/dev/null; then uv=(uv); else
  echo "error: uv is not installed; pip install uv (https://docs.astral.sh/uv/)" >&2; exit 1; fi
# --universal: one file for Linux, macOS and Windows (platform packages carry markers); 3.11: the oldest Python
"${uv[@]}" pip compile requirements/lock.in -o requirements/lock.txt --universal --python-version 3.11 \
  --no-header --upgrade "$@"
echo "wrote requirements/lock.txt: $(grep -cE '^[A-Za-z0-9]' requirements/lock.txt) pinned packages"
