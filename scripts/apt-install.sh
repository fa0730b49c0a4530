#!/usr/bin/env bash
# Install Debian packages: as root directly, otherwise through sudo (never prompting without a
# terminal). Without either, print what to install and fail.
set -euo pipefail

[ $# -gt 0 ] || exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "Please install these packages (Debian names): $*" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "Please install these Debian packages first (as root): apt-get install $*" >&2
    exit 1
  fi
  SUDO=(sudo)
  [ -t 0 ] || SUDO=(sudo -n)
fi
echo "Installing Debian packages: $*"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
