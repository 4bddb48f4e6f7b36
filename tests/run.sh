#!/usr/bin/env bash
# Installs what is needed, builds keyplane with AddressSanitizer and
# UndefinedBehaviorSanitizer, builds the libFuzzer drivers with clang, and runs
# every test through ctest. Exits non-zero on any failure.
#
#   ./tests/run.sh            everything
#   ./tests/run.sh -R unit    only tests whose name matches (passed to ctest)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)

./deploy/install-deps.sh

echo "== format check"
bad=$(git ls-files '*.c' '*.h' 2>/dev/null | xargs -r clang-format --dry-run -Werror 2>&1 | grep -c 'error:' || true)
if [ "$bad" != "0" ]; then
  git ls-files '*.c' '*.h' | xargs -r clang-format --dry-run -Werror 2>&1 | head -20
  echo "clang-format: $bad places differ from .clang-format; run clang-format -i on them" >&2
  exit 1
fi

echo "== build (Debug, ASan+UBSan, -Werror)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Debug -DKP_ASAN=ON -DKP_WERROR=ON >/dev/null
cmake --build build -j"$jobs"

echo "== build (Release, -Werror: what quickstart builds; optimisers warn differently)"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF -DKP_WERROR=ON >/dev/null
cmake --build build-release -j"$jobs"

echo "== build fuzz drivers (clang, libFuzzer)"
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DKP_FUZZ=ON \
  -DKP_TESTS=OFF -DKP_WERROR=ON >/dev/null
cmake --build build-fuzz -j"$jobs"

if command -v npm >/dev/null 2>&1 && [ -f tests/sdk/package-lock.json ]; then
  echo "== SDK check dependencies (npm ci, from the lockfile)"
  (cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)
fi
if command -v npm >/dev/null 2>&1 && [ -f tests/ui/package-lock.json ]; then
  # puppeteer-core, unlike puppeteer, downloads no browser: the tests drive
  # Debian's chromium and firefox-esr.
  echo "== console test dependencies (npm ci, from the lockfile: playwright-core, puppeteer-core)"
  (cd tests/ui && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

echo "== tests"
status=0
ctest --test-dir build --output-on-failure -j"$jobs" --timeout 900 "$@" || status=1
ctest --test-dir build-fuzz --output-on-failure -j"$jobs" --timeout 900 "$@" || status=1
exit $status
