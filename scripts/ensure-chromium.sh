#!/usr/bin/env bash
# Make sure a headless-capable Chromium is on this machine for tests/test_evidence.py.
# Idempotent: does nothing when /usr/bin/chromium (or $CHROMIUM) already runs.
# Installing needs apt and root (or sudo); anything else is reported, not guessed at.
set -euo pipefail

want="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$want" ] && "$want" --version >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-chromium: $want is missing and there is no apt-get to install it;" \
         "install Chromium and set CHROMIUM=/path/to/chromium" >&2
    exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "ensure-chromium: installing Chromium needs root (or sudo)" >&2
        exit 1
    fi
fi

echo "ensure-chromium: installing Debian's chromium (one-off)" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# fonts-dejavu-core gives the page real glyphs; without any font the screenshot is boxes
$sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
"$want" --version >&2
