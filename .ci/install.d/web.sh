#!/usr/bin/env bash
# kiln-onnx's browser test (crates/kiln-onnx/tests/browser.rs) opens web/ in Debian's Chromium,
# driven by playwright-core, with onnxruntime-web served from web/node_modules.
set -euo pipefail
cd "$(dirname "$0")/../.."
packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium fonts-liberation)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
if [ ${#packages[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${packages[@]}"
fi
echo "node $(node --version), npm $(npm --version), $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium ?')"
# Exactly the versions of web/package-lock.json (a machine that has them gets them from npm's cache).
(cd web && npm ci --no-audit --no-fund --prefer-offline)
