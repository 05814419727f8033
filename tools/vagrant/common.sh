# shellcheck shell=bash
# shellcheck disable=SC2034  # sourced: the scripts that source it use these
# Shared by the provisioners and check.sh: names and credentials of the demo.
# SITE (a|b) and SITE_N (1|2) come from the Vagrantfile's environment.

STACK_USER=stack
DEST=/opt/stack
DEVSTACK_DIR=$DEST/devstack
# A throwaway demo password, known to both sites: each gateway reads its
# peer's Neutron with it (never use this outside a lab).
ADMIN_PASSWORD=gwagent-demo
NETWORK_NAME=stretched
NETWORK_TRANSIT_VNI=5001
SUBNET=198.19.10.0/24
GATEWAY_NS=gwagent
CLOUDS_FILE=/etc/openstack/clouds.yaml
KEY_FILE=$DEST/.ssh/id_ed25519

mgmt_ip() { echo "198.18.255.$1"; }

# Run an openstack command as the stack user against cloud $1.
os_cloud() {
    local cloud=$1
    shift
    sudo -u "$STACK_USER" -H env OS_CLIENT_CONFIG_FILE="$CLOUDS_FILE" \
        openstack --os-cloud "$cloud" "$@"
}
