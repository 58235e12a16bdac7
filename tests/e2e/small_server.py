"""The environment of a small server under test: two sandboxes, no metrics
port, warnings only, HOME in the test's scratch folder."""

import os


def environment(home, **variables):
    """os.environ with the small server's settings and `variables` on top."""
    env = dict(os.environ)
    env.update(
        HOME=str(home),
        MCP_BRIDGE_POOL_MAX="2",
        MCP_BRIDGE_POOL_MIN_IDLE="1",
        MCP_BRIDGE_METRICS_ADDR="off",
        MCP_BRIDGE_LOG_LEVEL="warn",
    )
    env.update(variables)
    return env
