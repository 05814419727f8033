#!/bin/sh
# Create (or bring up to date) the Neutron server venv used by the
# integration tests, the benchmarks and `gwagent lab up --neutron`.
# Idempotent: re-running with everything installed takes a few seconds.
#
#   tools/setup-neutron-venv.sh [VENV]     (default: .venv-neutron)
#
# Needs python3.11 and network access to PyPI. Neutron runs from this venv
# only; the agent's own venv (.venv) never imports neutron.
set -eu
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV=${1:-$REPO/.venv-neutron}
PYTHON=${PYTHON:-python3.11}

# Pinned: Neutron 2025.2-era release on PyPI and the WSGI server serving it.
NEUTRON=neutron==29.0.0
UWSGI=uWSGI==2.0.31

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --upgrade "pip>=24"
"$VENV/bin/pip" install -q --disable-pip-version-check "$NEUTRON" "$UWSGI"
# gwagent itself (the ML2 driver must load inside the Neutron server); its own
# dependencies are the agent's (the drills' plotting and all), not Neutron's.
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e "$REPO"
# The ML2 driver is found by its entry point (pyproject.toml), as Neutron loads it.
"$VENV/bin/python" - <<'PY'
from importlib.metadata import entry_points, version
ep = [e for e in entry_points(group="neutron.ml2.mechanism_drivers") if e.name == "gwagent"][0]
ep.load()
print(f"neutron {version('neutron')} with ML2 driver gwagent = {ep.value}: ok")
PY
