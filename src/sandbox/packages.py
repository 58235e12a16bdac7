"""Packages in the sandbox: the run's package directory and what installs into it.

Owns the environment that points pip at the host's package index (a name
only the run's proxy serves, so it works whether or not egress is allowed),
the package directory's site folder (on sys.path before /workspace), and the
install a call asks for with `packages=[...]`, before its code starts. pip
installs for the user (PYTHONUSERBASE is the package directory, an
exec-allowed tmpfs the agent wipes at reset), so what the image has already
(numpy, pandas, ...) satisfies requirements and is not installed again.

Two ways to install: pip (the first time a set of requirements is asked
for, or into a package directory that holds some already), whose report
tells the host which wheels it chose; and, when the host remembers that
choice (its plan: the exact wheels, checked against its cache), the wheels
themselves, fetched from the index and unpacked as pip unpacks them into
the user scheme, without pip's start-up, resolution or bytecode
compilation. It runs nothing of a package: pip in a process of its own
whose output is the install's, not the run's, or zip extraction here; it
does not touch the agent's channel. Built by the agent (`exec` of this
source); `install` runs in the spare, as the user.
"""

import configparser
import csv
import errno
import hashlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile

PACKAGES_DIR = "/run/packages"
INDEX_HOST = "packages.mcp-code-exec.invalid"
# pip's own words for what went wrong, at most this much of them.
MAX_ERROR = 3000
# Entries of pip's report the status carries (the host bounds it again).
MAX_LISTED = 256


def site_dir():
    """Where pip installs for the user under PYTHONUSERBASE."""
    return f"{PACKAGES_DIR}/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def set_environment(environ):
    """What every run sees: pip installs for the user into the package
    directory, wheels only, from the host's index, quietly."""
    environ.update(
        {
            "PYTHONUSERBASE": PACKAGES_DIR,
            "PIP_USER": "1",
            "PIP_INDEX_URL": f"http://{INDEX_HOST}/simple",
            "PIP_TRUSTED_HOST": INDEX_HOST,
            "PIP_ONLY_BINARY": ":all:",
            # The image's Python is the system's (PEP 668); the package
            # directory is the run's own, wiped at reset.
            "PIP_BREAK_SYSTEM_PACKAGES": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            # The host keeps the wheels; a second cache would fill /tmp.
            "PIP_NO_CACHE_DIR": "1",
            "PIP_NO_WARN_SCRIPT_LOCATION": "1",
            "PIP_ROOT_USER_ACTION": "ignore",
        }
    )


def prepare():
    """The site folder exists before any run (an entry of sys.path that does
    not exist when first imported from is never looked at again)."""
    os.makedirs(site_dir(), exist_ok=True)


class InstallError(Exception):
    """The requirements could not be installed; the message says why."""


def install(requirements, wheels=(), run=subprocess.run):
    """Installs `requirements` (checked by the host: names and versions
    only): the host's planned `wheels` when it sends them and the package
    directory holds no distribution yet, else with pip; returns
    {"installed": [{name, version}], "duration_ms"} and, from pip, the
    wheels it chose ({filename, sha256}: what the host may plan next time)."""
    started = time.monotonic()
    if wheels and not any(name.endswith(".dist-info") for name in os.listdir(site_dir())):
        try:
            result = {"installed": install_wheels(wheels)}
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise InstallError(explain("No space left on device", requirements)) from exc
    else:
        result = pip_install(requirements, run)
    importlib.invalidate_caches()
    result["installed"] = result["installed"][:MAX_LISTED]
    result["duration_ms"] = int((time.monotonic() - started) * 1000)
    return result


def pip_install(requirements, run):
    """pip's install of `requirements`, with what its report says it chose."""
    scratch = f"{PACKAGES_DIR}/.pip-{os.getpid()}"
    os.makedirs(scratch, exist_ok=True)
    report = f"{scratch}/report.json"
    # pip's downloads and unpacking count in the package directory, not in /tmp.
    env = dict(os.environ, TMPDIR=scratch)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--report", report, "--", *requirements]
    try:
        # In its scratch folder: never /workspace, where a call's files (or a
        # `pip/` shadowing pip) could be read as requirements or modules.
        done = run(
            command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace"
        )
        if done.returncode != 0:
            raise InstallError(explain(done.stderr + done.stdout, requirements))
        with open(report, encoding="utf-8") as f:
            items = json.load(f).get("install", [])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    installed = [{"name": str(item["metadata"]["name"]), "version": str(item["metadata"]["version"])} for item in items]
    return {"installed": installed, "wheels": [chosen for item in items if (chosen := chosen_wheel(item))]}


def chosen_wheel(item):
    """The wheel of one entry of pip's report, as the index served it."""
    info = item.get("download_info") or {}
    sha256 = ((info.get("archive_info") or {}).get("hashes") or {}).get("sha256")
    filename = urllib.parse.urlsplit(str(info.get("url", ""))).path.rsplit("/", 1)[-1]
    if isinstance(sha256, str) and filename.endswith(".whl"):
        return {"filename": filename, "sha256": sha256}
    return None


def install_wheels(wheels):
    """Fetches each planned wheel from the index (checking its SHA-256) and
    unpacks it; what one wrote is removed again when any fails."""
    scratch = f"{PACKAGES_DIR}/.wheels-{os.getpid()}"
    os.makedirs(scratch, exist_ok=True)
    written = []
    try:
        for wheel in wheels:
            path = fetch(wheel, scratch)
            written += unpack(path, wheel["filename"])
            os.unlink(path)
    except BaseException:
        for path in reversed(written):
            remove_quietly(path)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [{"name": wheel["name"], "version": wheel["version"]} for wheel in wheels]


def fetch(wheel, scratch):
    """One wheel from the index into `scratch`, hashed as it comes."""
    path = os.path.join(scratch, "wheel")
    digest = hashlib.sha256()
    url = f"http://{INDEX_HOST}/files/{wheel['sha256']}/{urllib.parse.quote(wheel['filename'])}"
    with urllib.request.urlopen(url, timeout=60) as response, open(path, "wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != wheel["sha256"]:
        raise InstallError(f"{wheel['filename']} did not match its SHA-256")
    return path


def unpack(path, filename):
    """Unpacks a wheel as pip does for the user scheme: its files into the
    site folder, `NAME.data/{purelib,platlib,scripts,headers,data}` where
    pip puts them, the `.dist-info` completed with INSTALLER and a RECORD
    of the installed paths; console scripts made from entry_points.txt.
    A member whose path leaves its folder is refused. Returns the paths
    written."""
    site = site_dir()
    name = filename.split("-", 1)[0]
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    schemes = {
        "purelib": site,
        "platlib": site,
        "scripts": f"{PACKAGES_DIR}/bin",
        "headers": f"{PACKAGES_DIR}/include/{python}/{name}",
        "data": PACKAGES_DIR,
    }
    written = []
    with zipfile.ZipFile(path) as archive:
        infos = {m.split("/", 1)[0] for m in archive.namelist() if m.split("/", 1)[0].endswith(".dist-info")}
        if len(infos) != 1:
            raise InstallError(f"{filename} has {len(infos)} .dist-info folders, not one")
        info = infos.pop()
        data = info.removesuffix(".dist-info") + ".data/"
        hashes = record_hashes(archive, f"{info}/RECORD")
        rows = []
        for member in archive.infolist():
            if member.is_dir():
                continue
            root, inner = site, member.filename
            if inner.startswith(data):
                scheme, _, inner = inner[len(data) :].partition("/")
                root = schemes.get(scheme)
                if root is None:
                    raise InstallError(f"{filename}: unknown scheme {scheme!r} in {member.filename!r}")
            target = os.path.normpath(os.path.join(root, inner))
            if not target.startswith(root + os.sep):
                raise InstallError(f"{filename}: {member.filename!r} leaves its folder")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as out:
                written.append(target)
                shutil.copyfileobj(source, out, 1 << 20)
            if member.external_attr >> 16 & 0o111 or root == schemes["scripts"]:
                os.chmod(target, 0o755)
            if member.filename != f"{info}/RECORD":
                rows.append((os.path.relpath(target, site), *hashes.get(member.filename, ("", ""))))
    for script in console_scripts(os.path.join(site, info, "entry_points.txt")):
        written.append(script)
        rows.append((os.path.relpath(script, site), "", ""))
    with open(os.path.join(site, info, "INSTALLER"), "w", encoding="utf-8") as out:
        out.write("pip\n")
    rows += [(f"{info}/INSTALLER", "", ""), (f"{info}/RECORD", "", "")]
    with open(os.path.join(site, info, "RECORD"), "w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows(rows)
    return written


def record_hashes(archive, record):
    """A wheel's RECORD: member name -> (hash, size)."""
    try:
        text = archive.read(record).decode("utf-8")
    except KeyError:
        return {}
    return {row[0]: (row[1], row[2]) for row in csv.reader(io.StringIO(text)) if len(row) == 3}


def console_scripts(entry_points):
    """The launchers pip writes for a distribution's console and GUI scripts."""
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str
    try:
        parser.read(entry_points, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return []
    made = []
    for section in ("console_scripts", "gui_scripts"):
        for script, target in parser.items(section) if parser.has_section(section) else ():
            module, _, attribute = target.partition(":")
            if not (script.replace("-", "_").replace(".", "_").isidentifier() and module.strip()):
                continue
            path = f"{PACKAGES_DIR}/bin/{script}"
            os.makedirs(os.path.dirname(path), exist_ok=True)
            call = attribute.split("[")[0].strip() or "main"
            with open(path, "w", encoding="utf-8") as out:
                out.write(
                    f"#!{sys.executable}\nimport sys\nfrom {module.strip()} import {call.split('.')[0]}\n"
                    f"if __name__ == '__main__':\n    sys.exit({call}())\n"
                )
            os.chmod(path, 0o755)
            made.append(path)
    return made


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def explain(output, requirements):
    """One message from pip's output: its ERROR lines, what the index knows
    of a package it found nothing for, and the variable when the package
    directory is full."""
    # A bound of the run on the index names its variable in a warning of pip's.
    errors = [
        line for line in output.splitlines() if line.startswith("ERROR:") or "MCP_BRIDGE_" in line
    ] or output.strip().splitlines()[-5:]
    message = "\n".join(errors)[:MAX_ERROR]
    if "No space left on device" in output:
        message += (
            f"\nthe package directory {PACKAGES_DIR} is full: raise MCP_BRIDGE_PACKAGES_BYTES "
            "(it counts in MCP_BRIDGE_MEMORY)"
        )
    for line in errors:
        marker = "No matching distribution found for "
        if marker in line:
            name = line.split(marker, 1)[1].split()[0]
            why = ask_index(name)
            if why:
                message += f"\n{why}"
    return f"packages {', '.join(requirements)} could not be installed:\n{message}"


def ask_index(requirement):
    """The index's own word on why it has nothing for `requirement`."""
    name = requirement
    for stop in "[<>=!~ ;":
        name = name.split(stop, 1)[0]
    try:
        url = f"http://{INDEX_HOST}/why/{urllib.parse.quote(name)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read(2000).decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as error:
        # Refused by a bound of the run (it names its variable), say so.
        said = error.read(2000).decode("utf-8", "replace").strip()
        return said if "MCP_BRIDGE_" in said else ""
    except OSError:
        return ""
