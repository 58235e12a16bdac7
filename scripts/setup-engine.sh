#!/usr/bin/env bash
# Makes a container engine answer and the sandbox image exist, from nothing.
#
# Idempotent and fast when already done: every step first checks whether its
# result is already there. Safe to run as often as you like (CI runs it on
# every build).
#
# 1. Engine: if `docker info` already answers (local socket or $DOCKER_HOST),
#    use it. Otherwise, on Debian as root, install docker.io and start dockerd
#    in the background (log: /var/log/mcp-code-exec-dockerd.log).
# 2. Image: the project's sandbox image, mcp-code-exec-sandbox:data (Python
#    with numpy, pandas, matplotlib, scipy and pillow; the server's default
#    MCP_BRIDGE_IMAGE). Two recipes for the same tag: where a registry answers,
#    `docker build` of scripts/sandbox-image/Dockerfile (python:3.12-slim and
#    pinned wheels); where none does (as on the development VM), Debian trixie
#    packages through debootstrap and `docker import`.
# 3. With --bare, also mcp-code-exec-sandbox:trixie: Python alone, from Debian
#    packages, for the tests that prove nothing assumes the scientific stack.
# 4. With --verify-recipe, also build the offline recipe anew into a scratch
#    tag, check that the scientific stack imports in it, and remove it (CI
#    runs this: the default image may already exist on the machine).
#
# Usage: scripts/setup-engine.sh [--bare] [--verify-recipe]
set -euo pipefail

DATA_IMAGE=mcp-code-exec-sandbox:data
BARE_IMAGE=mcp-code-exec-sandbox:trixie
REGISTRY_BASE=python:3.12-slim
DATA_PACKAGES=python3,python3-numpy,python3-pandas,python3-matplotlib,python3-scipy,python3-pil
HERE="$(cd "$(dirname "$0")" && pwd)"
DOCKERD_LOG=/var/log/mcp-code-exec-dockerd.log

log() { printf 'setup-engine: %s\n' "$*" >&2; }

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# A dockerd process that is not a zombie (a killed daemon whose parent never
# reaped it still shows up in pgrep).
live_dockerd() { ps -C dockerd -o stat= 2>/dev/null | grep -qv '^Z'; }

apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "need these packages but cannot install them (not root on Debian): $*"
        exit 1
    fi
    if [ ! -f /var/lib/mcp-code-exec-apt-updated ]; then
        apt-get update -qq >&2
        touch /var/lib/mcp-code-exec-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

start_engine() {
    if engine_answers; then
        return
    fi
    if ! command -v dockerd >/dev/null; then
        log "no container engine answers; installing docker.io"
        # iptables and friends come as Recommends of docker.io but dockerd
        # needs them to start its default bridge network.
        apt_install docker.io iptables ca-certificates
    fi
    if ! live_dockerd; then
        # A daemon killed without cleanup (the machine's last session ended)
        # leaves its pid file behind; no dockerd runs, so it is stale.
        rm -f /var/run/docker.pid
        log "starting dockerd (log: $DOCKERD_LOG)"
        # setsid: the daemon must outlive this script and the CI step that ran it.
        setsid nohup dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
    fi
    for _ in $(seq 1 120); do
        if engine_answers; then
            log "engine up: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null)"
            return
        fi
        sleep 0.5
    done
    log "dockerd did not answer within 60 s; last lines of its log:"
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    exit 1
}

# Builds TAG from Debian trixie packages (debootstrap + import): Python 3.13,
# like the stock python:3.13-slim image, and its immortal objects make forked
# children cheaper (shared/notes/performance.md).
build_from_debian() {
    local tag=$1 packages=$2
    command -v debootstrap >/dev/null || apt_install debootstrap
    local rootfs
    rootfs=$(mktemp -d /var/tmp/mcp-code-exec-rootfs.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the path is this call's
    trap "rm -rf '$rootfs'" EXIT
    log "building $tag from Debian packages ($packages)"
    debootstrap --variant=minbase --include="$packages" trixie "$rootfs" \
        http://deb.debian.org/debian >/dev/null
    # Drop what a sandbox never needs, to keep the image small.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV PYTHONDONTWRITEBYTECODE=1' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'ENV MPLBACKEND=Agg' \
        -c 'CMD ["python3"]' - "$tag" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "built $tag"
}

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_data_image() {
    image_present "$DATA_IMAGE" && return
    log "trying the registry for $REGISTRY_BASE"
    if timeout 60 docker pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
        log "building $DATA_IMAGE from scripts/sandbox-image/Dockerfile"
        docker build -q -t "$DATA_IMAGE" "$HERE/sandbox-image" >/dev/null
        log "built $DATA_IMAGE"
    else
        log "no registry answers; building $DATA_IMAGE from Debian packages instead (about 90 s)"
        build_from_debian "$DATA_IMAGE" "$DATA_PACKAGES"
    fi
}

ensure_bare_image() {
    image_present "$BARE_IMAGE" || build_from_debian "$BARE_IMAGE" python3
}

verify_recipe() {
    local scratch=mcp-code-exec-sandbox:recipe-check
    build_from_debian "$scratch" "$DATA_PACKAGES"
    docker run --rm --network none --user 65534:65534 -e HOME=/tmp "$scratch" \
        python3 -c 'import numpy, pandas, scipy, PIL, matplotlib.pyplot; print("recipe ok:", numpy.__version__, pandas.__version__)' >&2
    docker rmi "$scratch" >/dev/null
}

start_engine
ensure_data_image
for option in "$@"; do
    case "$option" in
        --bare) ensure_bare_image ;;
        --verify-recipe) verify_recipe ;;
        *) log "unknown option $option (usage: scripts/setup-engine.sh [--bare] [--verify-recipe])"; exit 2 ;;
    esac
done
