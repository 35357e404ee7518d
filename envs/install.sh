#!/usr/bin/env bash
# Create or update the project environment (.venv) with drpo and its pinned dependencies.
# Idempotent: when pyproject.toml and this script are unchanged, a second run installs nothing.
#
# GPU machines: install the CUDA build of torch==2.13.0 into the venv first (see README), then
# run this script; the pin is satisfied and nothing is replaced.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${DRPO_VENV:-.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.drpo-install-stamp"
want="$(cat pyproject.toml envs/install.sh | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import drpo" 2>/dev/null; then
    echo "drpo: environment $venv is up to date"
    exit 0
fi

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "drpo needs Python >= 3.11 (found $("$python" --version)); set PYTHON=python3.11" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "drpo: installing into $venv (first time: a few minutes)"
# torch first and alone, so no other package can pull a different build.
"${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[test]"
# clean-fid pins old libraries and pulls torchvision; its clean mode needs neither.
"${pip[@]}" --no-deps "clean-fid==0.1.35"
if "$venv/bin/python" -c "import torchvision" 2>/dev/null; then
    echo "drpo: torchvision is installed in $venv; it breaks the CPU torch build. Remove it: $venv/bin/pip uninstall -y torchvision" >&2
    exit 1
fi
echo "$want" > "$stamp"
echo "drpo: environment ready ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
