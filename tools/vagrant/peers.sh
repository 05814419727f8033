#!/bin/bash
# Second step, once both clouds are up (`vagrant provision --provision-with
# peers`): give this site's gateway its peers' clouds and the stretched
# network's ID in every cloud, then restart the agent.
# Environment (from the Vagrantfile): SITE SITE_N PEERS (name:n,...).
# No `set -u`: devstack's functions (for iniset) read variables it may not set.
set -eo pipefail
# shellcheck source=tools/vagrant/common.sh
source /vagrant/tools/vagrant/common.sh
# shellcheck source=/dev/null
source "$DEVSTACK_DIR/functions"

: "${SITE:?}" "${SITE_N:?}" "${PEERS:?}"
conf=/etc/gwagent/gwagent.conf

local_id=$(os_cloud devstack-admin network show "$NETWORK_NAME" -f value -c id)
iniset "$conf" neutron network_ids "$NETWORK_NAME:$local_id"

names=()
for peer in ${PEERS//,/ }; do
    name=${peer%%:*}
    n=${peer##*:}
    names+=("$name")
    # The peer's cloud, read through its management address (this file is
    # the gateway's only way in, so it is its own, not devstack's).
    peer_file=/etc/openstack/peer-$name.yaml
    cat > "$peer_file" <<YAML
clouds:
  site-$name:
    auth:
      auth_url: http://$(mgmt_ip "$n")/identity
      username: admin
      password: $ADMIN_PASSWORD
      project_name: admin
      user_domain_id: default
      project_domain_id: default
    region_name: site-$name
    identity_api_version: 3
YAML
    chown "$STACK_USER" "$peer_file"
    chmod 600 "$peer_file"
    peer_id=$(sudo -u "$STACK_USER" -H env OS_CLIENT_CONFIG_FILE="$peer_file" \
        openstack --os-cloud "site-$name" network show "$NETWORK_NAME" -f value -c id)
    group=neutron_peer_$name
    iniset "$conf" "$group" cloud "site-$name"
    iniset "$conf" "$group" clouds_file "$peer_file"
    iniset "$conf" "$group" network_ids "$NETWORK_NAME:$peer_id"
    iniset "$conf" "$group" gateway_host "gw-$name"
    iniset "$conf" "$group" gateway_tunnel_ip "198.18.$n.1"
    iniset "$conf" "$group" gateway_transit_ip "198.18.0.$n"
done
iniset "$conf" neutron peers "$(IFS=,; echo "${names[*]}")"
systemctl restart devstack@gwagent
echo "site $SITE: gateway peers ${names[*]}; check with: vagrant ssh site-a -c /vagrant/tools/vagrant/check.sh"
