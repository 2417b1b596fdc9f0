"""Packaging promises: one version (pyproject's), the changelog knows it, the package carries its
data files, and the single-file build may leave out what the appliance never imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import ingress_box

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def test_version_has_one_source() -> None:
    assert importlib.metadata.version("ingress-box") == VERSION
    assert ingress_box.__version__ == VERSION


def test_version_flag_prints_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ingress_box", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"ingress-box, version {VERSION}"


def test_changelog_names_the_current_version() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Changelog\n", 1)
    assert len(section) == 2, "README has no '## Changelog' section"
    entries = re.findall(r"^### (\d+\.\d+\.\d+\S*)", section[1].split("\n## ", 1)[0], re.M)
    assert entries and entries[0] == VERSION, f"newest changelog entry {entries[:1]} != {VERSION}"


def test_installed_package_carries_its_data_files() -> None:
    files = resources.files("ingress_box")
    assert "CREATE TABLE" in files.joinpath("schema.sql").read_text(encoding="utf-8")
    manifests = [p.name for p in resources.files("ingress_box.manifests").iterdir()]
    assert "generic.toml" in manifests


# uvicorn[standard] extras that tests/build_single_file.sh leaves out of the single file.
LEFT_OUT = {"websockets", "yaml", "watchfiles", "dotenv"}


def test_the_appliance_never_imports_what_the_single_file_leaves_out() -> None:
    for path in sorted((ROOT / "ingress_box").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in LEFT_OUT, (
                    f"{path.relative_to(ROOT)} imports {name}: keep it in the single file "
                    "(UNUSED in tests/build_single_file.sh)"
                )


def test_the_box_runs_without_the_postgresql_extra() -> None:
    """psycopg is the ``postgresql`` extra (the single file leaves it out): with it made
    unimportable, every module of the package still imports and the CLI answers."""
    program = (
        "import sys, pkgutil, importlib, runpy\n"
        "sys.modules['psycopg'] = None  # import psycopg now raises ImportError\n"
        "import ingress_box\n"
        "for m in pkgutil.walk_packages(ingress_box.__path__, 'ingress_box.'):\n"
        "    if m.name != 'ingress_box.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "sys.argv = ['ingress-box', 'serve', '--help']\n"
        "runpy.run_module('ingress_box', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: ingress-box serve" in done.stdout
