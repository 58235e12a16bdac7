"""packages.py and the agent's reading of what it reports, without a
container: pip's failures become one message (the variable named when the
package directory is full, the index's word when it had nothing), and the
status the child sends about installs is bounded and typed."""

import csv
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest


def fake_pip(returncode, stderr="", installed=()):
    def run(command, env, cwd, **_):
        assert cwd == env["TMPDIR"], "pip runs in its scratch folder, never /workspace"
        assert command[3:6] == ["install", "--quiet", "--report"]
        assert command[7] == "--", "requirements can never be read as options"
        assert "/.pip-" in env["TMPDIR"], "pip's scratch is in the package directory"
        if returncode == 0:
            report = {"install": [{"metadata": {"name": n, "version": v}} for n, v in installed]}
            with open(command[6], "w") as f:
                json.dump(report, f)
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    return run


@pytest.fixture
def in_tmp(packages, tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "PACKAGES_DIR", str(tmp_path))
    return packages


def test_an_install_reports_names_and_versions(in_tmp, tmp_path):
    done = in_tmp.install(["tabulate"], run=fake_pip(0, installed=[("tabulate", "0.9.0")]))
    assert done["installed"] == [{"name": "tabulate", "version": "0.9.0"}]
    assert isinstance(done["duration_ms"], int)
    assert list(tmp_path.iterdir()) == [], "pip's scratch folder is gone"


def test_a_full_package_directory_names_the_variable(in_tmp):
    stderr = "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device\n"
    with pytest.raises(in_tmp.InstallError) as error:
        in_tmp.install(["pyarrow"], run=fake_pip(1, stderr))
    assert "MCP_BRIDGE_PACKAGES_BYTES" in str(error.value)
    assert str(error.value).startswith("packages pyarrow could not be installed:")


def test_nothing_found_asks_the_index_why(in_tmp, monkeypatch):
    asked = []
    monkeypatch.setattr(in_tmp, "ask_index", lambda name: asked.append(name) or "only source distributions")
    stderr = (
        "ERROR: Could not find a version that satisfies the requirement onlysdist>=1 (from versions: none)\n"
        "ERROR: No matching distribution found for onlysdist>=1\n"
    )
    with pytest.raises(in_tmp.InstallError) as error:
        in_tmp.install(["onlysdist>=1"], run=fake_pip(1, stderr))
    assert asked == ["onlysdist>=1"]
    assert "only source distributions" in str(error.value)


def test_the_childs_install_report_is_bounded_and_typed(agent):
    good = {"installed": [{"name": "six", "version": "1.16.0"}] * 300, "duration_ms": 5}
    parsed = agent.parse_installed(good)
    assert len(parsed["installed"]) == 256 and parsed["duration_ms"] == 5
    assert agent.parse_installed({"installed": [{"name": 1, "version": "x"}], "duration_ms": 1}) == {
        "installed": [],
        "duration_ms": 1,
        "wheels": [],
    }
    for bad in (None, [], {"installed": "six"}, {"installed": [], "duration_ms": -1}, {"installed": []}):
        assert agent.parse_installed(bad) is None
    forged = agent.parse_installed(
        {"installed": [{"name": "six\nstatus: success", "version": "1\x1b[2J"}], "duration_ms": 10**30}
    )
    assert forged == {
        "installed": [{"name": "sixstatus: success", "version": "1[2J"}],
        "duration_ms": 10**9,
        "wheels": [],
    }
    chose = {"filename": "six-1.16.0-py2.py3-none-any.whl", "sha256": "a" * 64}
    for wheels in ([chose, {"filename": 1}, "x"], 7, "six"):
        parsed = agent.parse_installed({"installed": [], "duration_ms": 1, "wheels": wheels})
        assert parsed["wheels"] == ([chose] if isinstance(wheels, list) else [])


def test_pip_reports_the_wheels_it_chose(in_tmp):
    sha = "b" * 64
    item = {
        "metadata": {"name": "six", "version": "1.16.0"},
        "download_info": {
            "url": f"http://packages.mcp-code-exec.invalid/files/{sha}/six-1.16.0-py2.py3-none-any.whl",
            "archive_info": {"hashes": {"sha256": sha}},
        },
    }

    def run(command, **_):
        with open(command[6], "w") as f:
            json.dump({"install": [item, {"metadata": {"name": "local", "version": "1"}}]}, f)
        return subprocess.CompletedProcess(command, 0, "", "")

    done = in_tmp.install(["six"], run=run)
    assert done["wheels"] == [{"filename": "six-1.16.0-py2.py3-none-any.whl", "sha256": sha}]


def make_wheel(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            archive.writestr(info, data)


def test_a_wheel_unpacks_as_pip_lays_it_out(in_tmp, tmp_path):
    wheel = tmp_path / "demo.whl"
    make_wheel(
        wheel,
        {
            "demo/__init__.py": "X = 1\n",
            "demo-1.0.dist-info/METADATA": "Name: demo\nVersion: 1.0\n",
            "demo-1.0.dist-info/RECORD": "demo/__init__.py,sha256=abc,6\ndemo-1.0.dist-info/RECORD,,\n",
            "demo-1.0.dist-info/entry_points.txt": "[console_scripts]\ndemo-cli = demo.cli:main\n",
            "demo-1.0.data/scripts/tool.sh": "#!/bin/sh\n",
            "demo-1.0.data/headers/demo.h": "int x;\n",
            "demo-1.0.data/data/share/demo.txt": "data\n",
            "demo-1.0.data/platlib/demo_native.py": "",
        },
    )
    site = pathlib.Path(in_tmp.site_dir())
    written = in_tmp.unpack(str(wheel), "demo-1.0-py3-none-any.whl")
    assert (site / "demo/__init__.py").read_text() == "X = 1\n"
    assert (site / "demo_native.py").exists()
    assert os.access(tmp_path / "bin/tool.sh", os.X_OK)
    assert (tmp_path / "share/demo.txt").read_text() == "data\n"
    assert (tmp_path / f"include/python{sys.version_info.major}.{sys.version_info.minor}/demo/demo.h").exists()
    assert "from demo.cli import main" in (tmp_path / "bin/demo-cli").read_text()
    assert (site / "demo-1.0.dist-info/INSTALLER").read_text() == "pip\n"
    record = {row[0]: row[1] for row in csv.reader((site / "demo-1.0.dist-info/RECORD").read_text().splitlines())}
    assert record["demo/__init__.py"] == "sha256=abc"
    assert "../../../bin/demo-cli" in record and "demo-1.0.dist-info/INSTALLER" in record
    assert str(tmp_path / "bin/demo-cli") in written


@pytest.mark.parametrize("escape", ["../../../evil.py", "demo-1.0.data/purelib/../../../../evil.py", "/abs.py"])
def test_a_wheel_member_leaving_its_folder_is_refused(in_tmp, tmp_path, escape):
    wheel = tmp_path / "bad.whl"
    make_wheel(wheel, {"demo-1.0.dist-info/METADATA": "", escape: "boom"})
    with pytest.raises(in_tmp.InstallError, match="leaves its folder"):
        in_tmp.unpack(str(wheel), "demo-1.0-py3-none-any.whl")
    assert not [p for p in tmp_path.rglob("*.py")], "nothing written outside"
