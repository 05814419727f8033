# shellcheck shell=bash
# devstack plugin for gwagent: the ML2 driver in Neutron, the agent as the
# devstack service "gwagent". devstack calls it as
#   source plugin.sh stack install|post-config|extra|test-config
#   source plugin.sh unstack|clean
# Variables and their defaults: devstack/settings.
#
# Two environments, as tools/setup-neutron-venv.sh does: the ML2 driver goes
# into Neutron's own with --no-deps (it imports only neutron, neutron_lib and
# oslo.log); the agent gets a venv of its own from the project's pins, which
# OpenStack's upper-constraints contradict (pyroute2, ovsdbapp, openstacksdk,
# prometheus_client), so one install into Neutron's would not resolve.

# The ML2 configuration file (devstack keeps its path without the leading /).
function _gwagent_ml2_conf {
    echo "/${NEUTRON_CORE_PLUGIN_CONF#/}"
}

# The value of GWAGENT_PEER_<peer>_<field>, empty when unset.
function _gwagent_peer_var {
    local name="GWAGENT_PEER_${1//[^A-Za-z0-9_]/_}_$2"
    echo "${!name:-}"
}

function install_gwagent {
    # The ML2 driver, inside Neutron's environment.
    pip_install --no-deps -e "$GWAGENT_DIR"
    # The agent, in its own environment.
    if [[ ! -x $GWAGENT_VENV/bin/python ]]; then
        "python${PYTHON3_VERSION:-3}" -m venv "$GWAGENT_VENV"
    fi
    "$GWAGENT_VENV/bin/pip" install -c "$GWAGENT_DIR/constraints.txt" -e "${GWAGENT_DIR}[neutron]"
    if [[ $GWAGENT_BACKEND == linux ]]; then
        # The ingress filter and the MAC guard speak libnftables; its Python
        # binding is the distribution's, linked into the venv.
        install_package nftables python3-nftables
        local purelib
        purelib=$("$GWAGENT_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        ln -sfn /usr/lib/python3/dist-packages/nftables "$purelib/nftables"
    fi
}

# Neutron: gwagent first among the mechanism drivers already configured, and
# notifications on.
function configure_gwagent_neutron {
    local ml2_conf drivers
    ml2_conf=$(_gwagent_ml2_conf)
    drivers=$(iniget "$ml2_conf" ml2 mechanism_drivers)
    drivers=${drivers// /}
    if [[ ",$drivers," != *,gwagent,* ]]; then
        # First, so that no agent-based driver tries the gateway host first.
        iniset "$ml2_conf" ml2 mechanism_drivers "gwagent${drivers:+,$drivers}"
    fi
    if [[ ",$drivers," != *,l2population,* ]]; then
        echo "WARNING: gwagent: no l2population in [ml2] mechanism_drivers ($drivers):" \
             "the L2 agents will not learn the remote ports"
    fi
    iniset "$NEUTRON_CONF" oslo_messaging_notifications driver messagingv2
}

function configure_gwagent {
    # The two sides are told apart by the address a frame is sent to (the
    # ingress filter's map, the mobility tap): one address cannot be both.
    if [[ -z $GWAGENT_TRANSIT_IP || $GWAGENT_TRANSIT_IP == "$GWAGENT_TUNNEL_IP" ]]; then
        die $LINENO "gwagent: set GWAGENT_TRANSIT_IP to the gateway's address facing" \
            "its peers, other than GWAGENT_TUNNEL_IP ($GWAGENT_TUNNEL_IP)"
    fi
    sudo install -d -o "$STACK_USER" -m 755 "$GWAGENT_CONF_DIR"
    # Written whole every time: a peer removed from GWAGENT_PEERS leaves no group.
    rm -f "$GWAGENT_CONF"
    local conf=$GWAGENT_CONF
    iniset "$conf" gateway source neutron
    iniset "$conf" gateway backend "$GWAGENT_BACKEND"
    iniset "$conf" gateway netns "$GWAGENT_NETNS"
    iniset "$conf" gateway state_dir "$GWAGENT_STATE_DIR"
    iniset "$conf" gateway ingress_filter "$GWAGENT_INGRESS_FILTER"
    iniset "$conf" gateway mac_guard "$GWAGENT_MAC_GUARD"

    iniset "$conf" neutron cloud "$GWAGENT_CLOUD"
    iniset "$conf" neutron clouds_file "$GWAGENT_CLOUDS_FILE"
    iniset "$conf" neutron site_name "$GWAGENT_SITE_NAME"
    iniset "$conf" neutron networks "$GWAGENT_NETWORKS"
    iniset "$conf" neutron network_ids "$GWAGENT_NETWORK_IDS"
    iniset "$conf" neutron gateway_host "$GWAGENT_GATEWAY_HOST"
    iniset "$conf" neutron gateway_tunnel_ip "$GWAGENT_TUNNEL_IP"
    iniset "$conf" neutron gateway_transit_ip "$GWAGENT_TRANSIT_IP"
    iniset "$conf" neutron peers "$GWAGENT_PEERS"

    local peer group value
    for peer in ${GWAGENT_PEERS//,/ }; do
        group=neutron_peer_$peer
        iniset "$conf" "$group" cloud "$(_gwagent_peer_var "$peer" CLOUD)"
        value=$(_gwagent_peer_var "$peer" CLOUDS_FILE)
        if [[ -n $value ]]; then
            iniset "$conf" "$group" clouds_file "$value"
        fi
        iniset "$conf" "$group" network_ids "$(_gwagent_peer_var "$peer" NETWORK_IDS)"
        iniset "$conf" "$group" gateway_host "$(_gwagent_peer_var "$peer" GATEWAY_HOST)"
        iniset "$conf" "$group" gateway_tunnel_ip "$(_gwagent_peer_var "$peer" TUNNEL_IP)"
        iniset "$conf" "$group" gateway_transit_ip "$(_gwagent_peer_var "$peer" TRANSIT_IP)"
    done
}

function start_gwagent {
    if [[ $GWAGENT_GRANT_SERVICE_ROLE == True ]]; then
        get_or_add_user_project_role service admin admin
    fi
    # Root: the agent programs netlink, nftables and the gateway's namespace.
    run_process gwagent "$GWAGENT_BIN run --config-file $GWAGENT_CONF" "" root
}

function stop_gwagent {
    # SIGTERM leaves the dataplane as it is; a restarted agent adopts it.
    stop_process gwagent
}

function cleanup_gwagent {
    # The one explicit removal of what the gateway owns (devices, entries,
    # filters, its remote ports); nothing else is touched.
    if [[ -x $GWAGENT_BIN && -f $GWAGENT_CONF ]]; then
        sudo "$GWAGENT_BIN" cleanup --config-file "$GWAGENT_CONF" --remote-ports || true
    fi
}

if [[ "$1" == "stack" && "$2" == "install" ]]; then
    echo_summary "Installing gwagent"
    install_gwagent
elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
    echo_summary "Configuring gwagent"
    configure_gwagent_neutron
    if is_service_enabled gwagent; then
        configure_gwagent
    fi
elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
    if is_service_enabled gwagent; then
        echo_summary "Starting gwagent"
        start_gwagent
    fi
fi

if [[ "$1" == "unstack" ]] && is_service_enabled gwagent; then
    stop_gwagent
fi

if [[ "$1" == "clean" ]] && is_service_enabled gwagent; then
    cleanup_gwagent
fi
