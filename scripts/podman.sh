#!/usr/bin/env bash
# Build and run deploy/Dockerfile without a Docker engine: Debian's podman, rootful, configured
# for these machines, and a Python base image made from Debian's packages (no container
# registry is needed, only the package registries). Idempotent and quiet once done; needs root.
#
#   scripts/podman.sh            install podman if missing and write its configuration
#   scripts/podman.sh env        print the environment that selects that configuration:
#                                  eval "$(scripts/podman.sh env)"; podman images
#   scripts/podman.sh base       also make the base image if missing; prints its name
#   scripts/podman.sh build TAG [podman build args...]
#                                build deploy/Dockerfile on that base as TAG (deploy/compose.yaml
#                                runs localhost/bfl-hooks:local), with the host's pip settings
#                                and CA bundle passed as build secrets
#   scripts/podman.sh clean      remove all of it (images, base tree, configuration)
#
# Everything lives under $BFL_PODMAN_HOME (default /var/lib/bfl-hooks/podman): the config
# files, the image storage and the debootstrap tree. /etc/containers is left as Debian ships it.
set -euo pipefail

home=${BFL_PODMAN_HOME:-/var/lib/bfl-hooks/podman}
base_image=localhost/bfl-hooks-base:bookworm
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { echo "scripts/podman.sh: $*" >&2; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

install_packages() {
    # runc, not crun: crun 1.8 refuses these machines' hybrid cgroup layout. Named explicitly,
    # it also keeps apt from choosing crun for podman's "crun | runc".
    local wanted=(podman runc conmon debootstrap uidmap slirp4netns catatonit) missing=() pkg
    for pkg in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        say "installing ${missing[*]} from Debian packages"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

storage_driver() {
    # overlay when the kernel mounts it where the images live (a plain ext4 root, as here):
    # layers are shared, not copied. vfs otherwise (an overlay root, a container): it copies
    # every layer whole, about 5 s for each build step here, but works anywhere. Each driver
    # has a storage of its own: podman refuses to open one another driver made.
    if [[ -n ${BFL_PODMAN_DRIVER:-} ]]; then
        echo "$BFL_PODMAN_DRIVER"
        return 0
    fi
    local probe
    probe=$(mktemp -d "$home/tmp/overlay-probe.XXXXXX")
    mkdir "$probe"/{lower,upper,work,merged}
    if mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" \
        "$probe/merged" 2>/dev/null; then
        umount "$probe/merged"
        echo overlay
    else
        echo vfs
    fi
    rm -rf "$probe"
}

write_config() {
    as_root mkdir -p "$home/tmp"
    local driver
    driver=$(storage_driver)
    # cgroupfs: PID 1 is not systemd. Pinned ulimits: podman's defaults raise nofile and nproc,
    # which fails here (no CAP_SYS_RESOURCE: "setrlimit RLIMIT_NPROC: Operation not permitted").
    # events to a file: there is no journald.
    as_root tee "$home/containers.conf" >/dev/null <<EOF
# Written by scripts/podman.sh; selected by CONTAINERS_CONF (scripts/podman.sh env).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$home/events.log"
runtime = "runc"
image_copy_tmp_dir = "$home/tmp"
EOF
    as_root tee "$home/storage.conf" >/dev/null <<EOF
# Written by scripts/podman.sh; selected by CONTAINERS_STORAGE_CONF (scripts/podman.sh env).
[storage]
driver = "$driver"
graphroot = "$home/storage-$driver"
runroot = "/run/bfl-hooks-podman-$driver"
EOF
}

environment() {
    echo "export CONTAINERS_CONF=$home/containers.conf"
    echo "export CONTAINERS_STORAGE_CONF=$home/storage.conf"
    echo "export TMPDIR=$home/tmp"
}

setup() {
    install_packages
    write_config
    eval "$(environment)"
    if [[ $(id -u) -ne 0 ]]; then
        say "podman runs rootful here: run as root"
        exit 1
    fi
    podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' >/dev/null
}

debian_mirror() {
    # The host's own Debian mirror, read from its apt sources (deb822 or one-line form).
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    if [[ -z $uri ]]; then
        uri=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    fi
    [[ -n $uri ]] || { say "no Debian mirror found in /etc/apt/sources.list*"; exit 1; }
    echo "$uri"
}

base() {
    setup
    eval "$(environment)"
    if podman image exists "$base_image"; then
        echo "$base_image"
        return 0
    fi
    # The tree stays outside the repository, and is reused if only the image was lost.
    local tree=$home/bookworm-py
    if [[ ! -x $tree/usr/bin/python3 ]]; then
        say "making $base_image with debootstrap (a few minutes, once)"
        rm -rf "$tree.partial"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$tree.partial" "$(debian_mirror)" >"$home/debootstrap.log" 2>&1 ||
            { tail -20 "$home/debootstrap.log" >&2; exit 1; }
        rm -rf "$tree.partial"/var/cache/apt/archives/*.deb "$tree.partial"/var/lib/apt/lists/*
        mv "$tree.partial" "$tree"
    fi
    tar -C "$tree" -c . | podman import \
        --change 'CMD ["/usr/bin/python3"]' --change 'ENV LANG=C.UTF-8' \
        --quiet - "$base_image" >/dev/null
    echo "$base_image"
}

pip_conf() {
    # The host's pip index settings, for pip inside the build: the index (if the host names
    # one) and the CA bundle the host trusts. file:// indexes and find-links stay out: those
    # folders are not in the build. Written to a private file passed as a build secret, so it
    # is in no layer and no history.
    local out=$1 index extra url
    index=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
    extra=${PIP_EXTRA_INDEX_URL:-$(python3 -m pip config get global.extra-index-url 2>/dev/null || true)}
    {
        echo "[global]"
        [[ $index == http* ]] && echo "index-url = $index"
        for url in $extra; do
            [[ $url == http* ]] && echo "extra-index-url = $url"
        done
        echo "cert = /run/secrets/host-ca"
    } >"$out"
}

build() {
    local tag=${1:?usage: scripts/podman.sh build TAG [podman build args...]}
    shift
    local from
    from=$(base)
    eval "$(environment)"
    # The secrets' folder goes when the script ends, a failed build included.
    secrets=$(mktemp -d)
    trap 'rm -rf "$secrets"' EXIT
    pip_conf "$secrets/pip.conf"
    local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
    # --format docker keeps HEALTHCHECK (the OCI format has no such field); --network host:
    # the build reaches the package registries as the host does.
    local args=(--format docker --network host --file "$repo/deploy/Dockerfile"
        --build-arg "BASE=$from"
        --secret "id=pip.conf,src=$secrets/pip.conf" --secret "id=host-ca,src=$ca")
    # The builder stage gets a tag of its own, so that its cached steps (the dependencies) are
    # reachable from a name and survive the prune below; the second build reuses them.
    podman build "${args[@]}" --target builder --tag "$tag-builder" "$@" "$repo"
    podman build "${args[@]}" --tag "$tag" "$@" "$repo"
    # Images no tag reaches any more (the previous builds of these tags): gone, so repeated
    # builds do not fill the disk.
    podman image prune --force >/dev/null
}

clean() {
    # Everything scripts/podman.sh made: images, containers, the base tree, the configuration.
    if [[ -f $home/storage.conf ]]; then
        eval "$(environment)"
        podman system reset --force >/dev/null 2>&1 || true
    fi
    # The overlay driver bind-mounts its own folder: undo that (and any left over) first.
    local mounted
    awk -v home="$home" 'index($2, home) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r mounted; do umount "$mounted"; done
    rm -rf "$home"
}

case ${1:-setup} in
    setup) setup ;;
    env) environment ;;
    base) base ;;
    build) shift; build "$@" ;;
    clean) clean ;;
    *) say "unknown command ${1}: setup, env, base, build or clean"; exit 2 ;;
esac
