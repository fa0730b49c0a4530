#!/usr/bin/env bash
# Create the virtualenv at $2 with the Python $1 (3.11 or newer), installing Debian's
# python3-venv first when the interpreter cannot make one.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${1:-python3}"
venv="${2:-.venv}"

if ! command -v "$python" >/dev/null 2>&1; then
  bash scripts/apt-install.sh python3 python3-venv
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Panda Professor needs Python 3.11 or newer; $python is $("$python" --version 2>&1)." >&2
  echo "Run with PYTHON=/path/to/python3.11 (make run PYTHON=...)." >&2
  exit 1
fi
if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
  rm -rf "$venv"
  version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  bash scripts/apt-install.sh "python${version}-venv" || bash scripts/apt-install.sh python3-venv
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
