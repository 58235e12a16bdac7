#!/usr/bin/env bash
# The one command that runs every test, from nothing: it makes a container
# engine answer and the sandbox image exist (scripts/setup-engine.sh),
# installs the MCP Python SDK for the end-to-end tests into a venv, then runs
# `cargo test`. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-engine.sh

venv=target/e2e-venv
if ! "$venv/bin/python" -c 'import mcp' 2>/dev/null; then
    echo "test.sh: installing the MCP Python SDK into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/e2e/requirements.txt
fi
export MCP_CODE_EXEC_TEST_PYTHON="$PWD/$venv/bin/python"

cargo test --all-targets "$@"
