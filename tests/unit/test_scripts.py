"""The shell scripts behind the README's two commands (``make demo``,
``make test``) pass shellcheck (the devstack plugin's and the Vagrant
provisioners' are checked beside their own tests)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [REPO / ".ci" / "run", REPO / "tools" / "demo.sh", REPO / "tools" / "setup-neutron-venv.sh"]


def test_the_scripts_of_the_two_commands_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: apt-get install -y shellcheck"
    done = subprocess.run([shellcheck, *map(str, SCRIPTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
