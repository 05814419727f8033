"""Programming FDB entries: our bulk netlink path against its baselines.

Each round starts from a fresh VXLAN device in a throwaway namespace and
adds N unicast ``self permanent`` entries with a ``dst`` and unique MACs:

* ours: gwagent.dataplane.netlink.Netlink.fdb_bulk (hand-encoded ndmsg, a
  window of acked requests per send());
* ``bridge -batch``: iproute2, one request and one ack per entry; the
  measured time includes starting ``ip netns exec`` and ``bridge`` (a few
  milliseconds), as anyone using it would pay;
* per-call pyroute2: ``IPRoute.fdb('add', ...)`` per entry; measured at 10k
  only (100k would take about half a minute a round) and compared as
  entries/s.

Requests and the batch file are built in setup, outside the timing. Every
round's result is checked: all N entries must be in the kernel.
"""
from __future__ import annotations

import pytest
from pyroute2 import IPRoute

from gwagent.dataplane.netlink import FdbRequest, Netlink
from netns import run

SIZES = {"10k": 10_000, "100k": 100_000}
ROUNDS = 3


def mac(i: int) -> str:
    return f"02:00:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"


def dst(i: int) -> str:
    return f"198.18.{1 + i % 250}.{1 + (i // 250) % 250}"


def fresh_vxlan(ns: str) -> None:
    run(ns, "ip", "link", "del", "vx0", check=False)
    run(ns, "ip", "link", "add", "vx0", "type", "vxlan", "id", "4242", "dstport", "4789",
        "local", "198.18.0.1", "nolearning")


def count_entries(nl: Netlink, ifindex: int) -> int:
    return sum(1 for r in nl.fdb_dump(frozenset([ifindex])) if r.dst is not None)


def record(figures: dict, key: str, benchmark, entries: int) -> None:
    figures[key] = {"seconds": benchmark.stats.stats.median, "entries": entries}
    benchmark.extra_info["entries_per_second"] = round(entries / benchmark.stats.stats.median)


@pytest.mark.parametrize("size", SIZES)
def test_ours(benchmark, netns, figures, size):
    n = SIZES[size]
    nl = Netlink(netns)
    try:
        def setup():
            fresh_vxlan(netns)
            index = nl.link("vx0").index
            reqs = [FdbRequest("replace", index, mac(i), dst(i)) for i in range(n)]
            return (reqs,), {}

        def check(reqs):
            errors = nl.fdb_bulk(reqs)
            assert errors == {}
            return reqs[0].ifindex

        index = benchmark.pedantic(check, setup=setup, rounds=ROUNDS, iterations=1)
        assert count_entries(nl, index) == n
    finally:
        nl.close()
    record(figures, f"fdb/ours/{size}", benchmark, n)


@pytest.mark.parametrize("size", SIZES)
def test_bridge_batch(benchmark, netns, figures, size, tmp_path):
    n = SIZES[size]
    batch = tmp_path / "fdb.batch"
    batch.write_text("".join(f"fdb add {mac(i)} dev vx0 dst {dst(i)} self permanent\n"
                             for i in range(n)))

    def setup():
        fresh_vxlan(netns)
        return (), {}

    benchmark.pedantic(lambda: run(netns, "bridge", "-batch", str(batch)),
                       setup=setup, rounds=ROUNDS, iterations=1)
    nl = Netlink(netns)
    try:
        assert count_entries(nl, nl.link("vx0").index) == n
    finally:
        nl.close()
    record(figures, f"fdb/bridge-batch/{size}", benchmark, n)


def test_per_call_pyroute2_10k(benchmark, netns, figures):
    n = SIZES["10k"]
    ipr = IPRoute(netns=netns, flags=0)
    try:
        def setup():
            fresh_vxlan(netns)
            return (ipr.link_lookup(ifname="vx0")[0],), {}

        def per_call(index):
            for i in range(n):
                ipr.fdb("add", ifindex=index, lladdr=mac(i), dst=dst(i))

        benchmark.pedantic(per_call, setup=setup, rounds=1, iterations=1)
    finally:
        ipr.close()
    nl = Netlink(netns)
    try:
        assert count_entries(nl, nl.link("vx0").index) == n
    finally:
        nl.close()
    record(figures, "fdb/per-call-pyroute2/10k", benchmark, n)
