#!/usr/bin/env bash
# Install what the test suite needs from Debian when it is missing: Chromium and Firefox (browser
# tests), PostgreSQL server binaries and Redis server (the tests start private instances of both),
# nginx with its stream module (the ICE-TCP-behind-port-443 layout test), nftables (the
# network-loss call test drops packets inside its own namespaces) and a font for screenshots.
# Nothing is installed when everything is there already.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1
then
  need+=(postgresql)
fi
[ -d /usr/share/fonts/truetype/dejavu ] || need+=(fonts-dejavu-core)
{ command -v firefox-esr >/dev/null 2>&1 || command -v firefox >/dev/null 2>&1; } || need+=(firefox-esr)
command -v timeout >/dev/null 2>&1 || need+=(coreutils)
{ command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; } || need+=(nginx)
ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1 || need+=(libnginx-mod-stream)
{ command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ]; } || need+=(nftables)

bash scripts/apt-install.sh "${need[@]}"
