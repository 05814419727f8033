"""Prometheus metrics of the agent (``[metrics]``, off by default).

Counters and histograms are updated where things happen (a pass, a Neutron
request); everything the agent already keeps as state (entries programmed,
conflicts, mobile MACs, the filters' drops, the last good pass) is read at
scrape time by one collector, so nothing is counted twice and a scrape costs
no pass anything. The endpoint is prometheus_client's own HTTP server on its
own registry (``/metrics``).

Names: ``gwagent_*``; labels carry the network, side, source or operation,
never an endpoint's MAC (a cloud's worth of MACs would be a time series
each).
"""
from __future__ import annotations

import collections
import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LOG = logging.getLogger(__name__)

PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The agent's metrics on a registry of their own."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.passes = Counter("gwagent_passes", "Reconcile passes, by reason and result",
                              ["reason", "result"], registry=r)
        self.pass_seconds = Histogram("gwagent_pass_duration_seconds",
                                      "Duration of a reconcile pass", buckets=PASS_BUCKETS,
                                      registry=r)
        self.operations = Counter("gwagent_operations",
                                  "Dataplane operations the passes performed, by kind and "
                                  "result (applied, failed)", ["kind", "result"], registry=r)
        self.requests = Counter("gwagent_neutron_requests",
                                "Requests to a Neutron API, by cloud, method and outcome "
                                "(HTTP status, or 'error' when none came)",
                                ["cloud", "method", "status"], registry=r)
        self.request_seconds = Histogram("gwagent_neutron_request_duration_seconds",
                                         "Latency of a Neutron API request, by cloud",
                                         ["cloud"], buckets=REQUEST_BUCKETS, registry=r)
        self.agent = None
        self.server = None

    def passed(self, result) -> None:
        """Count one pass (gwagent.control.agent.PassResult)."""
        self.passes.labels(result.reason or "manual", "ok" if result.ok else "failed").inc()
        self.pass_seconds.observe(result.elapsed_ms / 1000)
        failed = result.failed
        for kind, n in result.ops.items():  # ops: those tried, failed ones included
            if n - failed.get(kind, 0):
                self.operations.labels(kind, "applied").inc(n - failed.get(kind, 0))
        for kind, n in failed.items():
            self.operations.labels(kind, "failed").inc(n)

    def requested(self, cloud: str, method: str, status: str, seconds: float) -> None:
        """Count one Neutron request (gwagent.neutron.source.NeutronClient)."""
        self.requests.labels(cloud, method, status).inc()
        self.request_seconds.labels(cloud).observe(seconds)

    def watch(self, agent) -> None:
        """Read ``agent``'s state at every scrape."""
        self.agent = agent
        self.registry.register(_AgentCollector(agent))

    def serve(self, address: str, port: int) -> None:
        self.server, _ = start_http_server(port, address, registry=self.registry)
        LOG.info("metrics: http://%s:%d/metrics", address, self.server.server_port)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _AgentCollector:
    """The agent's state as metric families, at scrape time."""

    def __init__(self, agent):
        self.agent = agent

    def describe(self):
        return []  # collected at scrape time only: nothing to check at register

    def collect(self):
        a = self.agent
        entries = GaugeMetricFamily("gwagent_entries_programmed",
                                    "MAC places and flood destinations programmed, by network "
                                    "and side", labels=["network", "side"])
        for (network, side), n in sorted(a.programmed().items()):
            entries.add_metric([network, side], n)
        yield entries
        rejected = GaugeMetricFamily("gwagent_conflicts",
                                     "Endpoints left out (conflicting or malformed), by site",
                                     labels=["site"])
        if a.desired is not None:
            for site, n in sorted(collections.Counter(
                    r.site for r in a.desired.all_rejected()).items()):
                rejected.add_metric([site], n)
        yield rejected
        moves = CounterMetricFamily("gwagent_mobile_mac_decisions",
                                    "Mobility evidence decided, by outcome (moved, refused...)",
                                    labels=["outcome"])
        for outcome, n in sorted(a.mobility_counters.copy().items()):
            if isinstance(n, int) and outcome != "last_move_ms":
                moves.add_metric([outcome], n)
        yield moves
        with a.lock:
            mobile = a.mobility.status(a.clock(), a.wall() - a.clock())
        yield GaugeMetricFamily("gwagent_mobile_macs", "Mobile MACs the gateway follows",
                                value=len(mobile))
        yield GaugeMetricFamily("gwagent_mobile_macs_damped",
                                "Mobile MACs frozen for flapping",
                                value=sum(1 for m in mobile if m.get("frozen")))
        for name, what, state in (("ingress", "ingress filter", a.ingress),
                                  ("mac_guard", "MAC guard", a.guard_status)):
            drops = CounterMetricFamily(f"gwagent_{name}_dropped",
                                        f"Frames the {what} dropped, by side", labels=["side"])
            for side, n in sorted((state.get("dropped") or {}).items()):
                drops.add_metric([side], n)
            yield drops
        audit = a.mirror
        for name, what, n in (
                ("audits", "Full reads of the dataplane (audits, and reads made at once when "
                           "events were lost or a write failed)", audit.audits),
                ("drift", "Entries an audit found changed with no event seen (repaired)",
                 audit.drift),
                ("foreign_changes", "Changes behind the agent's back reported by events "
                                    "(repaired without a read)", audit.foreign),
                ("events_lost", "Times events were lost or the switch reconnected (a full "
                                "read followed)", audit.lost)):
            yield CounterMetricFamily(f"gwagent_dataplane_{name}", what, value=n)
        active = GaugeMetricFamily("gwagent_gateway_active",
                                   "1 if this node holds the site's addresses and writes its "
                                   "registry (always 1 for a site's only gateway), by node",
                                   labels=["node"])
        active.add_metric([a.node or ""], 1 if a.role == "active" else 0)
        yield active
        last = a.last_ok_wall
        if last is not None:
            yield GaugeMetricFamily("gwagent_last_successful_pass_timestamp_seconds",
                                    "When the last pass without an error ended (Unix time)",
                                    value=last)
        sources = GaugeMetricFamily("gwagent_source_fresh",
                                    "1 if a source's last read is good and in time, by role "
                                    "and name", labels=["role", "name"])
        for view in a.views:
            st = view.status()
            sources.add_metric([st["role"], st["name"]], 1 if st["state"] == "fresh" else 0)
        yield sources
