#!/usr/bin/env bash
# Install Debian's Chromium for the headless report test (tests/test_report.py) when it is missing.
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root or sudo; where it cannot
# install, it says so and the test is skipped (in CI, where CI is set, that test fails instead).
set -uo pipefail
[ -x /usr/bin/chromium ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
if command -v apt-get >/dev/null 2>&1 && $SUDO true 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null && /usr/bin/chromium --version
    exit 0
fi
echo "install_chromium.sh: cannot install Chromium here (needs apt-get and root); the report test will be skipped" >&2
exit 0
