#!/bin/bash
# Provision one site: the gateway's namespace, devstack with the gwagent
# plugin, the stretched network and a cirros VM on it.
# Environment (from the Vagrantfile): SITE SITE_N SEGMENTATION_ID VM_IP DEVSTACK_BRANCH.
set -euo pipefail
# shellcheck source=tools/vagrant/common.sh
source /vagrant/tools/vagrant/common.sh

: "${SITE:?}" "${SITE_N:?}" "${SEGMENTATION_ID:?}" "${VM_IP:?}" "${DEVSTACK_BRANCH:=master}"
tunnel_ip=198.18.$SITE_N.1
transit_ip=198.18.0.$SITE_N
compute_ip=198.18.$SITE_N.11
host_ip=$(mgmt_ip "$SITE_N")

# The NIC whose MAC the Vagrantfile fixed (52:54:00:00:<n>:<k>).
nic_by_mac() {
    local mac=$1 path
    for path in /sys/class/net/*; do
        if [[ $(cat "$path/address") == "$mac" ]]; then
            basename "$path"
            return
        fi
    done
    return 1
}

setup_gateway_namespace() {
    local underlay transit
    ip netns add "$GATEWAY_NS" 2>/dev/null || true
    if ! ip netns exec "$GATEWAY_NS" ip -o link show gw-underlay >/dev/null 2>&1; then
        underlay=$(nic_by_mac "$(printf '52:54:00:00:%02x:01' "$SITE_N")")
        ip link set "$underlay" down
        ip link set "$underlay" netns "$GATEWAY_NS" name gw-underlay
    fi
    if ! ip netns exec "$GATEWAY_NS" ip -o link show gw-transit >/dev/null 2>&1; then
        transit=$(nic_by_mac "$(printf '52:54:00:00:%02x:02' "$SITE_N")")
        ip link set "$transit" down
        ip link set "$transit" netns "$GATEWAY_NS" name gw-transit
    fi
    ip -n "$GATEWAY_NS" link set lo up
    ip -n "$GATEWAY_NS" addr replace "$tunnel_ip/24" dev gw-underlay
    ip -n "$GATEWAY_NS" addr replace "$transit_ip/24" dev gw-transit
    ip -n "$GATEWAY_NS" link set gw-underlay up
    ip -n "$GATEWAY_NS" link set gw-transit up
}

setup_stack_user() {
    apt-get update
    apt-get install -y git sudo
    if ! id "$STACK_USER" >/dev/null 2>&1; then
        useradd -s /bin/bash -d "$DEST" -m "$STACK_USER"
    fi
    chmod 755 "$DEST"
    echo "$STACK_USER ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/stack
    if [[ ! -d $DEVSTACK_DIR ]]; then
        sudo -u "$STACK_USER" -H git clone --branch "$DEVSTACK_BRANCH" \
            https://opendev.org/openstack/devstack "$DEVSTACK_DIR"
    fi
    if [[ ! -f $KEY_FILE ]]; then
        sudo -u "$STACK_USER" -H mkdir -p "$DEST/.ssh"
        sudo -u "$STACK_USER" -H ssh-keygen -q -t ed25519 -N '' -f "$KEY_FILE"
    fi
}

# The peers' settings are added by peers.sh once both clouds exist (their
# network IDs are only known then).
write_local_conf() {
    sudo -u "$STACK_USER" tee "$DEVSTACK_DIR/local.conf" >/dev/null <<CONF
[[local|localrc]]
ADMIN_PASSWORD=$ADMIN_PASSWORD
DATABASE_PASSWORD=$ADMIN_PASSWORD
RABBIT_PASSWORD=$ADMIN_PASSWORD
SERVICE_PASSWORD=$ADMIN_PASSWORD
HOST_IP=$host_ip
SERVICE_HOST=$host_ip
REGION_NAME=site-$SITE

# ML2 with the OVS agent and l2population (not OVN): the gateway's remote
# ports reach the computes through l2population.
Q_AGENT=openvswitch
Q_ML2_PLUGIN_MECHANISM_DRIVERS=openvswitch,l2population
Q_ML2_TENANT_NETWORK_TYPE=vxlan
ENABLE_TENANT_TUNNELS=True
TUNNEL_ENDPOINT_IP=$compute_ip
disable_service ovn-controller ovn-northd q-ovn-metadata-agent
enable_service q-svc q-agt q-dhcp q-l3 q-meta
disable_service horizon tempest cinder c-api c-vol c-sch swift

enable_plugin gwagent /vagrant
enable_service gwagent
GWAGENT_SITE_NAME=$SITE
GWAGENT_BACKEND=linux
GWAGENT_NETNS=$GATEWAY_NS
GWAGENT_GATEWAY_HOST=gw-$SITE
GWAGENT_TUNNEL_IP=$tunnel_ip
GWAGENT_TRANSIT_IP=$transit_ip
GWAGENT_NETWORKS=$NETWORK_NAME:$NETWORK_TRANSIT_VNI
CONF
}

# An ingress rule from the stretched subnet in group $1, unless there is one.
allow_from_subnet() {
    local sg=$1 protocol=$2
    shift 2
    if ! os_cloud devstack-admin security group rule list "$sg" --ingress --protocol "$protocol" \
            -f value -c "IP Range" | grep -qxF "$SUBNET"; then
        os_cloud devstack-admin security group rule create "$sg" --ingress \
            --protocol "$protocol" --remote-ip "$SUBNET" "$@"
    fi
}

create_network_and_vm() {
    local cloud=devstack-admin net_id pool_start pool_end image sg
    if ! os_cloud "$cloud" network show "$NETWORK_NAME" >/dev/null 2>&1; then
        os_cloud "$cloud" network create "$NETWORK_NAME" \
            --provider-network-type vxlan --provider-segment "$SEGMENTATION_ID"
    fi
    # The same subnet in both clouds; disjoint pools so that the DHCP ports
    # of the two clouds never take the same address.
    pool_start=198.19.10.$((100 + 50 * (SITE_N - 1)))
    pool_end=198.19.10.$((149 + 50 * (SITE_N - 1)))
    if ! os_cloud "$cloud" subnet show "$NETWORK_NAME" >/dev/null 2>&1; then
        os_cloud "$cloud" subnet create "$NETWORK_NAME" --network "$NETWORK_NAME" \
            --subnet-range "$SUBNET" --gateway none \
            --allocation-pool "start=$pool_start,end=$pool_end"
    fi
    # The default group admits only its own members: let the peer's VM in
    # (ping, and ssh for check.sh).
    sg=$(os_cloud "$cloud" security group list --project admin -f value -c ID -c Name |
        awk '$2 == "default" {print $1}')
    allow_from_subnet "$sg" icmp
    allow_from_subnet "$sg" tcp --dst-port 22
    if ! os_cloud "$cloud" keypair show vagrant >/dev/null 2>&1; then
        os_cloud "$cloud" keypair create vagrant --public-key "$KEY_FILE.pub"
    fi
    net_id=$(os_cloud "$cloud" network show "$NETWORK_NAME" -f value -c id)
    image=$(os_cloud "$cloud" image list -f value -c Name | grep -m1 '^cirros')
    if ! os_cloud "$cloud" server show "vm-$SITE" >/dev/null 2>&1; then
        os_cloud "$cloud" server create "vm-$SITE" --image "$image" --flavor m1.tiny \
            --nic "net-id=$net_id,v4-fixed-ip=$VM_IP" --key-name vagrant \
            --config-drive true --wait
    fi
}

setup_gateway_namespace
setup_stack_user
write_local_conf
if ! systemctl is-active --quiet devstack@q-svc; then
    sudo -u "$STACK_USER" -H bash -c "cd '$DEVSTACK_DIR' && ./stack.sh"
fi
create_network_and_vm
echo "site $SITE is up; when both are: vagrant provision --provision-with peers"
