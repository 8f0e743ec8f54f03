#!/usr/bin/env bash
# Print the path of a promtool binary, for the tests that check deploy/prometheus/ (promtool
# check rules). One on PATH is used as it is; otherwise promtool alone is unpacked from
# Debian's `prometheus` package (19 MB download) into .venv/tools/, without installing the
# package: installing it would add a Prometheus server, a system user and a service.
# Idempotent: a second run only prints the path.
#
#   scripts/promtool.sh          print promtool's path (downloading it the first time)
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    command -v promtool
    exit 0
fi
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${PROMTOOL_DIR:-$root/.venv/tools}
if [[ ! -x $tools/usr/bin/promtool ]]; then
    echo "scripts/promtool.sh: unpacking promtool from Debian's prometheus package" >&2
    work=$(mktemp -d)
    chmod 0777 "$work"  # apt fetches as its own _apt user
    trap 'rm -rf "$work"' EXIT
    # apt-get download needs package lists; root can refresh them, others use what is there.
    if [[ $(id -u) -eq 0 ]] && ! apt-cache show prometheus >/dev/null 2>&1; then
        apt-get update -qq
    fi
    (cd "$work" && apt-get download -qq prometheus >/dev/null)
    mkdir -p "$tools"
    dpkg-deb -x "$work"/prometheus_*.deb "$work/unpacked"
    install -D -m 0755 "$work/unpacked/usr/bin/promtool" "$tools/usr/bin/promtool"
fi
echo "$tools/usr/bin/promtool"
