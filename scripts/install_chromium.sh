#!/bin/sh
# Debian's Chromium for the browser tests of the app (tests/app/; Playwright drives it
# through executable_path, so Playwright's own browser download is never needed).
#
# Idempotent and non-interactive: nothing to do when the package is installed; else
# apt-get as root, or through password-less sudo; else it says what to run and fails.
#   CHROMIUM_PACKAGES  packages to install (default "chromium")
#   CHROMIUM_BIN       the binary that must exist afterwards (default /usr/bin/chromium)
# Measured on Debian 12: 12-27 s, about 120 MB downloaded, 420 MB installed.
set -eu

pkgs="${CHROMIUM_PACKAGES:-chromium}"
bin="${CHROMIUM_BIN:-/usr/bin/chromium}"

installed() {
    for p in $pkgs; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || return 1
    done
    [ -x "$bin" ]
}

if installed; then
    exit 0
fi
if [ -n "${STEMCAL_CHROMIUM:-}" ] && [ -x "$STEMCAL_CHROMIUM" ]; then
    exit 0  # a Chromium of one's own, which the tests use instead
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: $bin is missing and this system has no apt-get; install Chromium" \
         "and set STEMCAL_CHROMIUM=/path/to/chromium" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root="sudo -n"
else
    echo "chromium: not installed ($pkgs), and installing it needs root. Run as root:" >&2
    echo "    apt-get update && apt-get install -y --no-install-recommends $pkgs" >&2
    echo "(or set STEMCAL_CHROMIUM=/path/to/chromium)" >&2
    exit 1
fi

echo "chromium: installing $pkgs with apt-get"
export DEBIAN_FRONTEND=noninteractive
# waits up to 5 min for another apt/dpkg run instead of failing on its lock
$as_root apt-get -q -o DPkg::Lock::Timeout=300 update
$as_root apt-get -q -y -o DPkg::Lock::Timeout=300 install --no-install-recommends $pkgs

if ! installed; then
    echo "chromium: apt-get finished but $bin is still missing" >&2
    exit 1
fi
