"""Failover drills: move a VIP and measure what every client saw.

Why drills, and why these
    A VIP failing over between clouds is the reason gwagent exists, so the
    project ships the means to measure it against a running lab, with
    probes of its own: ``ping -i 0.01`` sends only about every 16 ms and
    says nothing of order. Each client VM sends sequence-numbered UDP
    probes to the VIP every millisecond; a responder in every VM that may
    hold the VIP echoes them with its own name, so a client knows who
    answered each probe (DESIGN.md, "Failover").

    * ``garp``: the VIP moves by one gratuitous ARP, built with scapy and
      sent by the drill from the new holder; the clock starts when it
      leaves. Modes: the VIP on the holder's own MAC (keepalived's
      default), or a shared virtual MAC (``use_vmac``) that moves with it.
    * ``vrrp``: real keepalived (VRRPv3) in the holders; the failure is the
      master VM's NIC going down, never keepalived alone (the old master
      would keep answering). The takeover's GARP is timestamped on the
      wire, not by keepalived's notify script.

    Every run moves the VIP inside one site (the baseline) and across sites,
    back and forth; afterwards every gateway's and compute's forwarding is
    checked against the current holder (:mod:`gwagent.drill.check`).

Modules
    ``probes``    the probe streams and responders (threads, sockets made
                  inside the namespaces);
    ``scenario``  the drill's VMs in the lab, VIP placement, GARP injection;
    ``check``     stale-entry check of gateways, computes and clients;
    ``garp``, ``vrrp``  the two drills;
    ``report``    table, JSON and the timeline plot;
    ``cli``       ``gwagent drill``.

The drill adds its own VMs to the lab (``dr-*``: three holders and one
client per site, on the chosen network) and removes them when it ends, so
it works on the default topology or any topology file and leaves the lab
as it found it.
"""
