#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries are installed (Debian packages), for the tests and
# benchmarks that start a throwaway cluster of their own (tests/pg.py). Idempotent and quiet
# when they are already there; needs root (or sudo) only when it has to install.
#
#   scripts/pg.sh            install if missing, then print the binaries' directory
set -euo pipefail

bindir() {
    # Debian keeps server binaries off $PATH, one directory per major version; newest first.
    local dir
    for dir in ${PG_BINDIR:-} $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV); do
        if [[ -x $dir/initdb && -x $dir/postgres && -x $dir/pg_isready ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

if ! bindir >/dev/null; then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    echo "scripts/pg.sh: installing PostgreSQL from Debian packages" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        postgresql >/dev/null
fi
bindir
