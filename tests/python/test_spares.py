"""Which fork source serves a run (spares.py): the light spare only for code
that surely needs nothing preloaded."""

import pytest


@pytest.mark.parametrize(
    "code",
    [
        "print(6*7)",
        "import os, sys, json\nfrom collections import Counter\nprint(Counter('ab'))",
        "import os.path\nfrom urllib.parse import urlparse",
        "from __future__ import annotations\nx: int = 1",
        "r = await mcp_github.list_issues()\nprint(len(r))",
        "import mcp\n",
        "eval_count = 1\nprint(eval_count)",  # a name, not a call to eval
        "if x\n    print(1)",  # a syntax error fails alike anywhere
    ],
)
def test_code_that_imports_only_the_standard_library_is_light(spares, code):
    assert not spares.needs_preload({"code": code})


@pytest.mark.parametrize(
    "code",
    [
        "import numpy as np",
        "import pandas",
        "from matplotlib import pyplot as plt",
        "import matplotlib.pyplot as plt",
        "import os, numpy",
        "def f():\n    import scipy\n",
        "import requests",  # a third-party module may import anything
        "from skills import load_sales",
        "from . import sibling",
        "import importlib\nimportlib.import_module('pandas')",
        "from importlib import import_module",
        "import pickle\npickle.loads(b'')",
        "__import__('pandas')",
        "exec('import pandas')",
        "eval(compile('1', '', 'eval'))",
    ],
)
def test_code_that_may_need_the_preload_is_not(spares, code):
    assert spares.needs_preload({"code": code})


def test_sessions_packages_and_long_code_go_to_the_data_spare(spares):
    assert spares.needs_preload({"code": "print(1)", "session": True})
    assert spares.needs_preload({"code": "print(1)", "packages": ["tabulate"]})
    assert not spares.needs_preload({"code": "print(1)", "packages": []})
    long = "x = 1\n" * (spares.MAX_SCANNED_BYTES // 6 + 1)
    assert spares.needs_preload({"code": long})
    assert not spares.needs_preload({"code": long[: spares.MAX_SCANNED_BYTES]})
