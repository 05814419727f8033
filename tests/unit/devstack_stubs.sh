# shellcheck shell=bash
# The few devstack functions devstack/plugin.sh calls, for tests/unit/test_devstack.py.
# iniset/iniget really edit ini files (Python's configparser); the functions
# that would install or start something append their arguments to
# $DEVSTACK_STUB_LOG instead, one call a line.

function _stub_log {
    echo "$*" >> "$DEVSTACK_STUB_LOG"
}

function iniset {
    "${DEVSTACK_STUB_PYTHON:-python3}" - "$@" <<'PY'
import configparser, sys
path, section, option, value = sys.argv[1:5]
p = configparser.ConfigParser(interpolation=None)
p.optionxform = str
p.read(path)
if section != "DEFAULT" and not p.has_section(section):
    p.add_section(section)
p.set(section, option, value)
with open(path, "w") as f:
    p.write(f)
PY
}

function iniget {
    "${DEVSTACK_STUB_PYTHON:-python3}" - "$@" <<'PY'
import configparser, sys
path, section, option = sys.argv[1:4]
p = configparser.ConfigParser(interpolation=None)
p.optionxform = str
p.read(path)
print(p.get(section, option, fallback=""))
PY
}

function die {
    shift
    echo "ERROR: $*" >&2
    exit 1
}

function define_plugin { :; }
function echo_summary { :; }

function is_service_enabled {
    local service
    for service in "$@"; do
        [[ ,${ENABLED_SERVICES:-}, == *,${service},* ]] && return 0
    done
    return 1
}

function enable_service {
    local service
    for service in "$@"; do
        [[ ,${DISABLED_SERVICES:-}, == *,${service},* ]] && continue
        is_service_enabled "$service" || ENABLED_SERVICES+=",$service"
    done
}

function pip_install { _stub_log pip_install "$@"; }
function install_package { _stub_log install_package "$@"; }
function run_process { _stub_log run_process "$@"; }
function stop_process { _stub_log stop_process "$@"; }
function get_or_add_user_project_role { _stub_log get_or_add_user_project_role "$@"; }
function sudo { _stub_log sudo "$@"; "$@"; }
