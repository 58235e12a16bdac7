#!/usr/bin/env bash
# A sandbox image with a team's packages baked in: sandboxes of it import
# them with no install step, and they can be preloaded (MCP_BRIDGE_PRELOAD).
#
# Usage: scripts/derive-image.sh --packages-file requirements.txt --tag NAME:TAG
#            [--from IMAGE] [--find-links DIR]
#
# The host's pip downloads the wheels (its own index and trust, as for any
# registry use; with --find-links DIR, only from that folder: offline), for
# the base image's Python and platform, wheels only; the image is then built
# with no network at all (`docker build --network none`): pip inside
# installs from those wheels only, and what the base image has already
# (numpy, pandas, ...) stays as it is. Then set MCP_BRIDGE_IMAGE=NAME:TAG.
# DOCKER=podman uses Podman's CLI instead.
set -euo pipefail

docker=${DOCKER:-docker}
from=mcp-code-exec-sandbox:data
packages_file="" tag="" find_links=""
while [ $# -gt 0 ]; do
    case "$1" in
        --packages-file) packages_file=${2:?}; shift 2 ;;
        --tag) tag=${2:?}; shift 2 ;;
        --from) from=${2:?}; shift 2 ;;
        --find-links) find_links=${2:?}; shift 2 ;;
        *) echo "derive-image: unknown argument $1 (see the usage at the top of $0)" >&2; exit 2 ;;
    esac
done
if [ -z "$packages_file" ] || [ -z "$tag" ]; then
    echo "derive-image: --packages-file FILE and --tag NAME:TAG are required" >&2
    exit 2
fi
# Requirement lines only: no options (an index, a path, -e) can ride along.
if grep -Ev '^\s*(#.*)?$' "$packages_file" | grep -Eq '^\s*-|@|://|^\s*[./]'; then
    echo "derive-image: $packages_file may hold names and versions only (no options, URLs or paths)" >&2
    exit 2
fi

# The base image's Python and machine, for pip's wheel tags.
read -r version machine < <("$docker" run --rm --network none --entrypoint python3 "$from" \
    -c 'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())')
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir "$context/wheels"
cp "$packages_file" "$context/requirements.txt"
platforms=()
for glibc in 2014 _2_28 _2_34; do
    platforms+=(--platform "manylinux${glibc}_${machine}")
done
sources=()
[ -n "$find_links" ] && sources=(--no-index --find-links "$find_links")
echo "derive-image: downloading wheels for Python $version ($machine) with the host's pip" >&2
python3 -m pip download --quiet --disable-pip-version-check --only-binary :all: \
    --python-version "$version" --implementation cp "${platforms[@]}" --platform any \
    "${sources[@]}" -r "$context/requirements.txt" -d "$context/wheels"

cat > "$context/Dockerfile" <<EOF
FROM $from
COPY wheels /tmp/wheels
COPY requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --no-index --find-links /tmp/wheels --only-binary :all: \\
        --break-system-packages --no-cache-dir --disable-pip-version-check \\
        -r /tmp/requirements.txt \\
    && rm -rf /tmp/wheels /tmp/requirements.txt
LABEL org.mcp-code-exec.derived-from="$from"
EOF
echo "derive-image: building $tag from $from (no network)" >&2
"$docker" build --quiet --network none -t "$tag" "$context" >/dev/null
echo "derive-image: built $tag; use it with MCP_BRIDGE_IMAGE=$tag" >&2
