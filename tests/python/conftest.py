"""Imports the sandbox's Python (src/sandbox/*.py) as plain modules, so that
their pure parts can be tested without a container."""

import importlib.util
import pathlib

import pytest

SANDBOX = pathlib.Path(__file__).resolve().parents[2] / "src" / "sandbox"


def load(name):
    spec = importlib.util.spec_from_file_location(name, SANDBOX / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def agent():
    return load("agent")


@pytest.fixture(scope="session")
def mcp_runtime():
    return load("mcp_runtime")


@pytest.fixture(scope="session")
def mcp_display():
    return load("display")


@pytest.fixture(scope="session")
def packages():
    return load("packages")


@pytest.fixture(scope="session")
def streams_module():
    return load("streams")


@pytest.fixture(scope="session")
def spares():
    return load("spares")


@pytest.fixture(scope="session")
def skills_module():
    return load("skills")
