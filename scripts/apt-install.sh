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
# The tests start private servers of their own; packaged services (nginx on port 80, say) stay off.
# policy-rc.d is the Debian hook for that; it is removed again only when this script put it there.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 755 "$POLICY"
  trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
