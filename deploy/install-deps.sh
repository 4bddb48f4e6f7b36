#!/usr/bin/env bash
# Installs every build, run and test dependency of keyplane from Debian's
# packages. Idempotent: does nothing when all packages are present, and runs
# `apt-get update` only when something is missing.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config clang libclang-rt-14-dev clang-format git
  # libraries (DESIGN.md: Dependencies)
  libuv1-dev node-llhttp libraft-dev libcurl4-openssl-dev libmsgpack-dev
  libzstd-dev libssl-dev libjansson-dev libfyaml-dev
  # tests and tools
  libcmocka-dev python3 curl ca-certificates procps iproute2
  # certificates for TLS (deploy/make-certs.sh, its tests)
  openssl
  # reliability scenarios: clock jumps (libfaketime), zstd frames in the secret scan
  faketime zstd
  # benchmarks: the side-by-side references
  nginx-light wrk
  # the local three-node cluster behind a load balancer (deploy/local-cluster.sh)
  haproxy
  # the web console's end-to-end tests (tests/ui: playwright-core drives
  # chromium, puppeteer-core drives firefox-esr over WebDriver BiDi; headless)
  chromium firefox-esr fonts-dejavu-core
)

# The SDK checks (tests/sdk) run the official Node.js SDKs, and the console
# tests (tests/ui) run playwright-core and puppeteer-core. Machines that
# already have node and npm (for example from NodeSource) keep theirs.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when an install from the current lists fails
# (fresh machines have none; old lists may name versions that are gone).
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
# nginx and haproxy are installed for the benchmarks and the local cluster
# only (they start their own with a private config): when this run installed
# one, do not leave Debian's default service running.
for svc in nginx:nginx-light haproxy:haproxy; do
  if [[ " ${missing[*]} " == *" ${svc#*:} "* ]]; then
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
      $SUDO systemctl disable --now "${svc%%:*}" >/dev/null 2>&1 || true
    elif [ -f "/run/${svc%%:*}.pid" ]; then
      $SUDO kill "$(cat "/run/${svc%%:*}.pid")" >/dev/null 2>&1 || true
    fi
  fi
done
echo "install-deps: done"
