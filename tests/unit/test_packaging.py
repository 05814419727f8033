"""The release artefacts: the sdist and the wheel a gateway installs.

Built offline, as a user would, with ``python -m build --no-isolation``
(sdist first, then the wheel from the unpacked sdist, so the wheel also
proves the sdist is complete) from a copy of the source tree, so that the
build leaves nothing in the working tree. The extras' tests import gwagent
in a child Python in which the optional packages cannot be imported
(``sys.modules[name] = None``, the way Python itself marks a module absent).
"""
from __future__ import annotations

import configparser
import email.parser
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import gwagent

ROOT = pathlib.Path(__file__).resolve().parents[2]
VERSION = gwagent.__version__

# What each extra must bring (distribution names), and what the base install
# must not: a Linux-backend gateway has none of it.
EXTRAS = {
    "neutron": {"openstacksdk", "kombu"},
    "openflow": {"os-ken", "ovsdbapp"},
    "drills": {"scapy", "matplotlib", "gwagent"},  # gwagent[lab]: a drill runs on a lab
}
BASE = {"pyroute2", "oslo-config", "oslo-log", "pyyaml", "prometheus-client"}
# The top-level modules of every optional package (and Neutron's own, which
# only the ML2 driver inside neutron-server imports).
OPTIONAL_MODULES = ["os_ken", "ovsdbapp", "scapy", "matplotlib", "openstack",
                    "keystoneauth1", "neutron", "neutron_lib"]


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(sdist, wheel, build output) built from a copy of the tree."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".benchmarks",
        ".pytest_cache"))
    out = tmp / "out"
    run = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out),
                          str(src)], capture_output=True, text=True, timeout=120)
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"python -m build failed:\n{log[-4000:]}"
    sdist, = out.glob("gwagent-*.tar.gz")
    wheel, = out.glob("gwagent-*.whl")
    return sdist, wheel, log


def wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(f"gwagent-{VERSION}.dist-info/METADATA").decode()
        entry_points = z.read(f"gwagent-{VERSION}.dist-info/entry_points.txt").decode()
    return email.parser.Parser().parsestr(meta), entry_points


def requirements(meta) -> dict[str | None, dict[str, Requirement]]:
    """Requires-Dist by extra (None: the base install)."""
    by_extra: dict[str | None, dict[str, Requirement]] = {}
    for line in meta.get_all("Requires-Dist"):
        req = Requirement(line)
        extra = None
        if req.marker is not None:
            extra, = re.findall(r'extra == "([^"]+)"', str(req.marker))
        by_extra.setdefault(extra, {})[canonicalize_name(req.name)] = req
    return by_extra


def test_build_is_clean(dists):
    """No deprecated metadata (the license table, classifiers), no pattern of
    MANIFEST.in that matches nothing."""
    _, _, log = dists
    bad = [line for line in log.splitlines()
           if re.search(r"deprecat|no (previously-included )?files (found )?matching", line, re.I)]
    assert not bad, "\n".join(bad)


def test_wheel_has_the_package_its_data_and_entry_points(dists):
    _, wheel, _ = dists
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "gwagent").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel"
    assert "gwagent/lab/default.yaml" in names  # `gwagent lab up` without a topology file
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".pyc")]

    meta, entry_points = wheel_metadata(wheel)
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "Apache-2.0"
    ep = configparser.ConfigParser()
    ep.read_string(entry_points)
    assert ep["console_scripts"]["gwagent"] == "gwagent.cli:main"
    # neutron-server finds the driver by this name: mechanism_drivers = ...,gwagent
    assert ep["neutron.ml2.mechanism_drivers"]["gwagent"] == \
        "gwagent.neutron.ml2:GwagentMechanismDriver"
    assert ep["oslo.config.opts"]["gwagent"] == "gwagent.config:list_opts"


def test_wheel_declares_the_extras(dists):
    _, wheel, _ = dists
    meta, _ = wheel_metadata(wheel)
    assert set(meta.get_all("Provides-Extra")) >= {*EXTRAS, "lab", "test"}
    reqs = requirements(meta)
    assert set(reqs[None]) == BASE
    for extra, wanted in EXTRAS.items():
        assert set(reqs[extra]) == wanted, extra
    # The lab runs both backends and Neutron sites; the tests need everything.
    assert reqs["lab"]["gwagent"].extras >= {"neutron", "openflow"}
    assert reqs["drills"]["gwagent"].extras == {"lab"}
    assert reqs["test"]["gwagent"].extras >= {*EXTRAS, "lab"}


def test_pins_agree_with_constraints(dists):
    """`make setup` installs with -c constraints.txt: a pin of pyproject.toml
    that the constraints contradict cannot be installed."""
    _, wheel, _ = dists
    meta, _ = wheel_metadata(wheel)
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    for extra, reqs in requirements(meta).items():
        for name, req in reqs.items():
            if name == "gwagent":
                continue
            assert name in pins, f"{name} ({extra or 'base'}) is not in constraints.txt"
            assert req.specifier.contains(pins[name]), \
                f"{req} ({extra or 'base'}) but constraints.txt has {pins[name]}"


def test_sdist_has_what_rebuilds_and_tests_it(dists):
    sdist, _, _ = dists
    top = f"gwagent-{VERSION}/"
    with tarfile.open(sdist) as tar:
        members = {m.name.removeprefix(top): m for m in tar.getmembers()}
    wanted = ["README.md", "CHANGELOG.md", "pyproject.toml", "MANIFEST.in", "Makefile",
              "constraints.txt", "etc/gwagent.conf.sample", "tools/setup-neutron-venv.sh",
              "tools/grafana/gwagent-dashboard.json", "gwagent/lab/default.yaml"]
    wanted += [p.relative_to(ROOT).as_posix() for p in ROOT.glob("LICEN[CS]E*")]
    wanted += [p.relative_to(ROOT).as_posix() for d in ("tests", "bench")
               for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts]
    assert [w for w in wanted if w not in members] == []
    assert members["tools/setup-neutron-venv.sh"].mode & 0o111, "the script lost its x bit"
    assert not [n for n in members if n.startswith((".ci", ".venv", ".git/"))
                or "__pycache__" in n or n.endswith(".pyc")]


def test_changelog_has_this_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d\d-\d\d$", text, re.M), \
        f"CHANGELOG.md has no section for {VERSION}"


def without_extras(code: str, blocked=OPTIONAL_MODULES) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python where the ``blocked`` modules are absent."""
    prelude = f"import sys\nfor _m in {list(blocked)!r}:\n    sys.modules[_m] = None\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_base_install_imports_without_any_extra():
    """Every module of the agent with the Linux backend, and the whole
    command line, import with no optional package: the extras' imports are
    lazy or inside their features (openflow, lab, drill, the ML2 driver)."""
    run = without_extras("""
        import importlib, pkgutil, gwagent
        skip = ("gwagent.openflow", "gwagent.lab", "gwagent.drill.", "gwagent.neutron.ml2")
        for m in pkgutil.walk_packages(gwagent.__path__, "gwagent."):
            if not m.name.startswith(skip):
                importlib.import_module(m.name)
        from gwagent.cli import parser
        parser(["run"]).parse_args(["run", "--config-file", "x.conf"])
        print("ok")
    """)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_openflow_backend_without_its_extra_names_it():
    run = without_extras("""
        from gwagent.extras import MissingExtra
        try:
            from gwagent.openflow.backend import OpenFlowBackend
        except MissingExtra as exc:
            print(exc)
    """, blocked=["os_ken"])
    assert run.stdout.strip() == (
        "the OpenFlow backend (backend = openflow) needs gwagent[openflow]: "
        "pip install 'gwagent[openflow]' (not installed: os_ken)"), run.stderr


def test_neutron_source_without_its_extra_names_it():
    run = without_extras("""
        from gwagent.extras import MissingExtra
        from gwagent.neutron.source import NeutronClient
        try:
            NeutronClient("site-a")
        except MissingExtra as exc:
            print(exc)
    """)
    assert run.stdout.strip() == (
        "the Neutron source (source = neutron) needs gwagent[neutron]: "
        "pip install 'gwagent[neutron]' (not installed: openstack, keystoneauth1)"), run.stderr


def test_drill_without_its_extra_names_it_and_does_not_start(tmp_path):
    """Before the drill touches any lab (an empty lab directory here)."""
    run = without_extras(f"""
        from gwagent.cli import main
        sys.exit(main(["drill", "garp", "--lab-dir", {str(tmp_path)!r}]))
    """, blocked=["scapy"])
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        "drill: error: gwagent drill needs gwagent[drills]: "
        "pip install 'gwagent[drills]' (not installed: scapy)")
