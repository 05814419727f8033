"""The two-cloud Vagrantfile and its provisioning scripts, checked without booting.

``vagrant validate`` (Debian's ``vagrant`` with ``vagrant-libvirt``) checks the
common configuration and the libvirt provider block; it needs no network and
downloads no box. The VirtualBox block is only parsed: Vagrant validates a
provider's settings only where that provider is installed. Every provisioning
script passes shellcheck. A missing tool fails the test, never skips it.
"""

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "tools" / "vagrant").glob("*.sh"))


def _tool(name, package):
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install -y {package}")
    return path


def _validate(cwd, tmp_path):
    vagrant = _tool("vagrant", "vagrant vagrant-libvirt")
    env = dict(os.environ,
               VAGRANT_CWD=str(cwd),
               VAGRANT_HOME=str(tmp_path / "vagrant-home"),       # nothing in ~/.vagrant.d
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dotfile"),    # nothing in the repository
               VAGRANT_DEFAULT_PROVIDER="libvirt",
               VAGRANT_CHECKPOINT_DISABLE="1")                     # no version check online
    return subprocess.run([vagrant, "validate"], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def test_vagrantfile_validates_and_leaves_nothing_behind(tmp_path):
    before = set(ROOT.iterdir())
    result = _validate(ROOT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    assert set(ROOT.iterdir()) == before


def test_validate_rejects_a_misspelt_libvirt_setting(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    text = (ROOT / "Vagrantfile").read_text()
    assert "lv.cpus = CPUS" in text
    (copy / "Vagrantfile").write_text(text.replace("lv.cpus = CPUS", "lv.cpuz = CPUS"))
    result = _validate(copy, tmp_path)
    assert result.returncode != 0
    assert "cpuz" in result.stdout + result.stderr


def test_there_are_provisioning_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"stack.sh", "peers.sh", "check.sh"} <= names
    text = (ROOT / "Vagrantfile").read_text()
    for name in ("stack.sh", "peers.sh"):
        assert f"tools/vagrant/{name}" in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_provisioning_script_passes_shellcheck(script):
    shellcheck = _tool("shellcheck", "shellcheck")
    result = subprocess.run([shellcheck, "-x", "--severity=style", str(script.relative_to(ROOT))],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
