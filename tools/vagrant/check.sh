#!/bin/bash
# Show cross-cloud traffic: from this site's VM, ping the other site's VM on
# the stretched network. Run on site a:
#   vagrant ssh site-a -c /vagrant/tools/vagrant/check.sh
# Exit status 0 when the peer's VM answered.
set -euo pipefail
# shellcheck source=tools/vagrant/common.sh
source /vagrant/tools/vagrant/common.sh

from=${1:-198.19.10.11}   # vm-a, in this cloud
to=${2:-198.19.10.21}     # vm-b, in the other cloud

net_id=$(os_cloud devstack-admin network show "$NETWORK_NAME" -f value -c id)
echo "gateway: $(sudo "$DEST/data/gwagent/venv/bin/gwagent" status \
    --config-file /etc/gwagent/gwagent.conf 2>&1 | head -n 1 || true)"
echo "ping $to (other cloud) from $from (this cloud), inside $from:"
# The VM is reached from its network's DHCP namespace (the stretched network
# has no router), with the key stack.sh put in it.
if sudo ip netns exec "qdhcp-$net_id" ssh -i "$KEY_FILE" \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 \
        "cirros@$from" "ping -c 5 -W 2 $to"; then
    echo "OK: cross-cloud traffic flows"
else
    echo "FAILED: no answer from $to; see sudo journalctl -u devstack@gwagent" >&2
    exit 1
fi
