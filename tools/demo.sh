#!/usr/bin/env bash
# `make demo`: the story of gwagent in five steps, on this one host.
# The package managers' output goes to a log file named on screen; what is
# shown is what the lab does. Run again, it rebuilds the lab (the installs
# are then already done and take seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${DEMO_LOG:-$PWD/demo-setup.log}
GWAGENT=.venv/bin/gwagent

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 installing what the lab needs (the first time: a few minutes); log: $LOG"
: >"$LOG"
for target in "system-packages:Debian packages (iproute2, Open vSwitch, keepalived, RabbitMQ, ...)" \
              "venv:.venv, the agent and its pinned dependencies" \
              "neutron-venv:.venv-neutron, Neutron 29 for the lab's clouds"; do
    started=$SECONDS
    printf '  %s ... ' "${target#*:}"
    if ! make -s "${target%%:*}" >>"$LOG" 2>&1; then
        echo "failed; the end of $LOG:" >&2
        tail -n 30 "$LOG" >&2
        exit 1
    fi
    echo "ok ($((SECONDS - started)) s)"
done

step "2/5 building the lab: two clouds (sites a and b), two computes and four VMs each, a gateway per site"
"$GWAGENT" lab down >/dev/null 2>&1 || true   # a lab left from an earlier demo
"$GWAGENT" lab up

step "3/5 the lab: nodes, addresses, processes"
"$GWAGENT" lab status

step "4/5 every pair of VMs on the same network, within and across sites (red and blue overlap: same subnet, isolated)"
"$GWAGENT" lab check

step "5/5 a failover drill: a VRRP virtual MAC moves from site a to site b and back (gratuitous ARP), probed every 1 ms"
"$GWAGENT" drill garp --mode vmac --scope cross --runs 2

cat <<'NEXT'

The lab stays up. Three things to try next:
  .venv/bin/gwagent status --config-file /run/gwagent/lab/gwl/a-gw.conf   # what gateway a holds and did
  .venv/bin/gwagent drill vrrp                                            # the same failover with real keepalived
  .venv/bin/gwagent lab exec a1-red -- ping -c 3 198.19.10.21             # a VM of site a pings one of site b
Remove the lab with 'make lab-down'.
NEXT
