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
# 2. Image: if $MCP_BRIDGE_IMAGE (default python:3.12-slim) is present, done.
#    Else try to pull it; where no registry answers, build the offline image
#    mcp-code-exec-sandbox:trixie from Debian packages (debootstrap + import).
#    The server falls back to that image by itself when its default is missing.
set -euo pipefail

OFFLINE_IMAGE="${MCP_CODE_EXEC_OFFLINE_IMAGE:-mcp-code-exec-sandbox:trixie}"
WANTED_IMAGE="${MCP_BRIDGE_IMAGE:-python:3.12-slim}"
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

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

build_offline_image() {
    command -v debootstrap >/dev/null || apt_install debootstrap
    ROOTFS=$(mktemp -d /var/tmp/mcp-code-exec-rootfs.XXXXXX)
    trap 'rm -rf "$ROOTFS"' EXIT
    log "building $OFFLINE_IMAGE from Debian packages (about 40 s)"
    # trixie: Python 3.13 (like the stock python:3.13-slim image), and its
    # immortal objects make forked children cheaper (shared/notes/performance.md).
    debootstrap --variant=minbase --include=python3 trixie "$ROOTFS" \
        http://deb.debian.org/debian >/dev/null
    # Drop what a sandbox never needs, to keep the image small.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
        "$ROOTFS"/usr/share/doc "$ROOTFS"/usr/share/man "$ROOTFS"/usr/share/locale
    tar -C "$ROOTFS" -c . | docker import \
        -c 'ENV PYTHONDONTWRITEBYTECODE=1' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["python3"]' - "$OFFLINE_IMAGE" >/dev/null
    log "built $OFFLINE_IMAGE"
}

ensure_image() {
    if image_present "$WANTED_IMAGE" || image_present "$OFFLINE_IMAGE"; then
        return
    fi
    log "pulling $WANTED_IMAGE"
    if timeout 60 docker pull -q "$WANTED_IMAGE" >/dev/null 2>&1; then
        return
    fi
    log "no registry answers for $WANTED_IMAGE; building the offline image instead"
    build_offline_image
}

start_engine
ensure_image
