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
#    with numpy, pandas, matplotlib, scipy and pillow, and pip, requests, httpx,
#    aiohttp and certifi for the network; the server's default
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
# The engine to make ready comes first (default: docker):
# - docker: the above.
# - gvisor: the above, then gVisor's runsc (Debian package) registered with
#   dockerd as the OCI runtime `runsc` (merged into /etc/docker/daemon.json,
#   with --network=none: network-less containers need it), dockerd reloaded
#   (SIGHUP: running containers keep running) and `docker info` checked.
#   Sandboxes use it with MCP_BRIDGE_OCI_RUNTIME=runsc.
# - podman: the above (the images are built with Docker), then Podman (Debian
#   package), its Docker-compatible API service on /run/podman/podman.sock
#   (started in the background, log: /var/log/mcp-code-exec-podman.log), and
#   the same images copied into Podman's store (`docker save | podman load`,
#   when Podman's copy is missing or differs). With MCP_BRIDGE_RUNTIME=podman
#   the server finds that socket by itself.
#
# --stop-podman alone stops the Podman API service this script started (CI
# does, so that its Docker lane runs on a machine with no Podman socket).
#
# Usage: scripts/setup-engine.sh [docker|gvisor|podman] [--bare] [--verify-recipe]
#        scripts/setup-engine.sh --stop-podman
set -euo pipefail

DATA_IMAGE=mcp-code-exec-sandbox:data
BARE_IMAGE=mcp-code-exec-sandbox:trixie
REGISTRY_BASE=python:3.12-slim
DATA_PACKAGES=python3,python3-numpy,python3-pandas,python3-matplotlib,python3-scipy,python3-pil,python3-pip,python3-requests,python3-httpx,python3-aiohttp,python3-certifi
# Bumped when either recipe of the data image changes: an image of an older
# recipe is built again (its environment says which recipe made it).
DATA_RECIPE=2
HERE="$(cd "$(dirname "$0")" && pwd)"
DOCKERD_LOG=/var/log/mcp-code-exec-dockerd.log
DOCKERD_CONFIG=/etc/docker/daemon.json
PODMAN_SOCKET=/run/podman/podman.sock
PODMAN_LOG=/var/log/mcp-code-exec-podman.log
PODMAN_PID=/run/mcp-code-exec-podman.pid
USAGE="usage: scripts/setup-engine.sh [docker|gvisor|podman] [--bare] [--verify-recipe] | --stop-podman"

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
        -c "ENV MCP_CODE_EXEC_IMAGE_RECIPE=$DATA_RECIPE" \
        -c 'ENV PYTHONDONTWRITEBYTECODE=1' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'ENV MPLBACKEND=Agg' \
        -c 'CMD ["python3"]' - "$tag" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "built $tag"
}

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

# The data image is there and made by today's recipe.
data_image_current() {
    docker image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$DATA_IMAGE" 2>/dev/null |
        grep -qx "MCP_CODE_EXEC_IMAGE_RECIPE=$DATA_RECIPE"
}

ensure_data_image() {
    data_image_current && return
    if image_present "$DATA_IMAGE"; then
        log "$DATA_IMAGE is of an older recipe: building it again"
    fi
    log "trying the registry for $REGISTRY_BASE"
    if timeout 60 docker pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
        log "building $DATA_IMAGE from scripts/sandbox-image/Dockerfile"
        docker build -q --build-arg "RECIPE=$DATA_RECIPE" -t "$DATA_IMAGE" "$HERE/sandbox-image" >/dev/null
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
        python3 -c 'import numpy, pandas, scipy, PIL, matplotlib.pyplot, requests, httpx, aiohttp, certifi, pip; print("recipe ok:", numpy.__version__, pandas.__version__)' >&2
    docker rmi "$scratch" >/dev/null
}

runsc_registered() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

# daemon.json names runsc with --network=none (dockerd may still list a
# runtime its configuration no longer has: a reload does not drop runtimes).
runsc_configured() {
    python3 - "$DOCKERD_CONFIG" <<'PYTHON'
import json, sys
try:
    runsc = json.load(open(sys.argv[1]))["runtimes"]["runsc"]
except (OSError, ValueError, KeyError, TypeError):
    sys.exit(1)
sys.exit(0 if "--network=none" in runsc.get("runtimeArgs", []) else 1)
PYTHON
}

# gVisor's runsc, registered with dockerd as the runtime `runsc`.
ensure_gvisor() {
    command -v runsc >/dev/null || { log "installing gVisor (runsc)"; apt_install runsc; }
    runsc_configured && runsc_registered && return
    log "registering runsc with dockerd ($DOCKERD_CONFIG)"
    mkdir -p "$(dirname "$DOCKERD_CONFIG")"
    # Merged into what is there: other settings and runtimes stay.
    python3 - "$DOCKERD_CONFIG" "$(command -v runsc)" <<'PYTHON'
import json, os, sys
path, runsc = sys.argv[1], sys.argv[2]
config = {}
if os.path.exists(path) and os.path.getsize(path) > 0:
    with open(path) as f:
        config = json.load(f)
# Without --network=none, a container with `--network none` fails under
# runsc here: "cannot run with network enabled in root network namespace".
config.setdefault("runtimes", {})["runsc"] = {"path": runsc, "runtimeArgs": ["--network=none"]}
with open(path + ".tmp", "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
PYTHON
    # SIGHUP reloads the runtimes; running containers are not touched.
    local dockerd
    dockerd=$(pidof dockerd) || { log "no local dockerd to reload ($DOCKERD_CONFIG is its config; DOCKER_HOST points elsewhere?)"; exit 1; }
    kill -HUP $dockerd
    for _ in $(seq 1 40); do
        runsc_registered && { log "dockerd has runsc: $(runsc --version 2>/dev/null | head -n 1)"; return; }
        sleep 0.25
    done
    log "dockerd did not pick up runsc after SIGHUP; runtimes: $(docker info --format '{{json .Runtimes}}')"
    exit 1
}

podman_answers() { DOCKER_HOST="unix://$PODMAN_SOCKET" timeout 10 docker version >/dev/null 2>&1; }

# Podman and its Docker-compatible API service.
ensure_podman() {
    command -v podman >/dev/null || { log "installing Podman"; apt_install podman; }
    if ! podman_answers; then
        mkdir -p "$(dirname "$PODMAN_SOCKET")"
        # A socket file left by a service that is gone would refuse connections.
        rm -f "$PODMAN_SOCKET"
        log "starting Podman's API service on $PODMAN_SOCKET (log: $PODMAN_LOG)"
        # setsid: the service must outlive this script; --time=0: it never exits idle.
        setsid nohup podman system service --time=0 "unix://$PODMAN_SOCKET" \
            >"$PODMAN_LOG" 2>&1 </dev/null &
        echo $! >"$PODMAN_PID"
        for _ in $(seq 1 60); do
            podman_answers && break
            sleep 0.5
        done
        podman_answers || { log "Podman's API did not answer within 30 s:"; tail -n 20 "$PODMAN_LOG" >&2; exit 1; }
    fi
    log "Podman up: $(podman version --format '{{.Server.Version}}' 2>/dev/null)"
}

# Stops the API service ensure_podman started (by its recorded pid; a
# service started otherwise is left alone) and removes its socket.
stop_podman() {
    local pid
    pid=$(cat "$PODMAN_PID" 2>/dev/null) || return 0
    rm -f "$PODMAN_PID"
    # Only if that pid is still the service (a pid is reused once it is gone).
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'podman system service' || return 0
    kill "$pid"
    for _ in $(seq 1 40); do
        kill -0 "$pid" 2>/dev/null || { log "stopped Podman's API service (pid $pid)"; rm -f "$PODMAN_SOCKET"; return 0; }
        sleep 0.25
    done
    log "Podman's API service (pid $pid) did not stop within 10 s"
    return 1
}

# TAG in Podman's store, the same image (same id) as Docker's.
copy_image_to_podman() {
    local tag=$1 id
    id=$(docker image inspect --format '{{.Id}}' "$tag")
    [ "$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" = "${id#sha256:}" ] && return
    log "copying $tag from Docker into Podman's store"
    docker save "$tag" | podman load -q >/dev/null
    # `podman load` names it localhost/NAME:TAG, which Podman also answers to as NAME:TAG.
    [ "$(podman image inspect --format '{{.Id}}' "$tag")" = "${id#sha256:}" ] ||
        { log "$tag in Podman's store is not Docker's image (ids differ) after podman load"; exit 1; }
}

if [ "${1:-}" = --stop-podman ]; then
    stop_podman
    exit 0
fi
engine=docker
case "${1:-}" in
    docker | gvisor | podman) engine=$1; shift ;;
esac
bare=false
recipe=false
for option in "$@"; do
    case "$option" in
        --bare) bare=true ;;
        --verify-recipe) recipe=true ;;
        *) log "unknown option $option ($USAGE)"; exit 2 ;;
    esac
done

start_engine
ensure_data_image
if $bare; then ensure_bare_image; fi
if $recipe; then verify_recipe; fi
case "$engine" in
    gvisor) ensure_gvisor ;;
    podman)
        ensure_podman
        copy_image_to_podman "$DATA_IMAGE"
        if $bare; then copy_image_to_podman "$BARE_IMAGE"; fi
        ;;
esac
