"""The Linux backend's ingress filter: a table of the gateway's own in nftables.

VXLAN (UDP 4789) to the gateway's tunnel address is accepted only from the
site's known VTEPs, and to its transit address only from the peer gateways
(:class:`gwagent.state.Admission`); the rest is dropped before the VXLAN
driver sees it, and counted: per side by the drop rule's counter, per
offender (outer source address) in a set of the offenders with a counter
on every element. Written through libnftables' JSON interface (Debian's
``python3-nftables``, the binding nftables ships), never by running ``nft``.

::

    table inet gwagent {                       # ours alone; nothing else is touched
      set site_admit { type ipv4_addr; }       # the site's known VTEPs
      set transit_admit { type ipv4_addr; }    # the peer gateways
      set site_offenders { type ipv4_addr; size 4096; flags dynamic; counter; }
      set transit_offenders { ... }
      chain site {
        ip saddr @site_admit accept            # every tenant packet: one lookup
        add @site_offenders { ip saddr }
        counter drop
      }
      chain transit { ... the same with the transit sets ... }
      chain ingress {
        type filter hook prerouting priority raw; policy accept;
        udp dport 4789 ip daddr vmap { TUNNEL : jump site, TRANSIT : jump transit }
      }
    }

(The first version's four rules of matches, two set lookups a packet, cost
10% of TCP through the gateways; this one: see the README's benchmarks.)

``prerouting`` at the raw priority drops before connection tracking, so a
flood of rogue frames costs no conntrack entries. The offenders' set holds
at most :data:`OFFENDERS_MAX` addresses (a flood of spoofed sources fills
it; its drops are still counted by side, and dropped all the same: the
drop is a rule of its own). A change of who is admitted replaces the
admitted sets' elements in one transaction; the rules and the offenders'
counters stay. A table deleted or changed behind the agent's back is put
back at the next pass (``sync``), as the FDB is.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import queue
import sys
import threading
from pathlib import Path

from gwagent.state import Admission, IngressCounters

LOG = logging.getLogger(__name__)

TABLE = "gwagent"
FAMILY = "inet"
CHAIN = "ingress"
VXLAN_PORT = 4789
OFFENDERS_MAX = 4096
_DEBIAN_BINDING = "/usr/lib/python3/dist-packages"


class IngressError(Exception):
    pass


def _load_binding():
    """libnftables' Python binding: Debian installs it for the system
    Python only (``python3-nftables``), one pure-Python package over ctypes.
    The project's venv links to it (Makefile); an agent in another venv
    loads that one package from Debian's directory, nothing else of it."""
    try:
        import nftables
        return nftables
    except ImportError:
        pass
    path = Path(_DEBIAN_BINDING) / "nftables" / "__init__.py"
    spec = importlib.util.spec_from_file_location("nftables", path)
    if not path.exists() or spec is None:
        raise IngressError("the ingress filter needs libnftables' Python binding "
                           "(Debian: apt-get install python3-nftables), or set "
                           "[gateway] ingress_filter = false")
    module = importlib.util.module_from_spec(spec)
    sys.modules["nftables"] = module
    spec.loader.exec_module(module)
    return module


def _match(proto: str, field: str, op: str, right) -> dict:
    return {"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}},
                      "right": right}}


def _locals(adm: Admission) -> list[tuple[str, str]]:
    """(local address, side) a frame is judged by; one address serving
    both sides is judged once (state.admission gave both the same sources)."""
    out: dict[str, str] = {}
    for side, local, _ in adm.sides():
        out.setdefault(local, side)
    return sorted(out.items())


def ruleset(adm: Admission) -> list[dict]:
    """Pure: the commands that create the whole table for ``adm`` (the
    caller deletes an old one first, in the same transaction). The base
    chain sends VXLAN to each local address to its side's chain by one
    verdict map; there an admitted source is accepted by one set lookup
    (the path of every tenant packet), and the rest is added to the
    offenders and dropped."""
    t = {"family": FAMILY, "table": TABLE}
    out = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
    for side, _, sources in adm.sides():
        out.append({"add": {"set": {**t, "name": f"{side}_admit", "type": "ipv4_addr"}}})
        out.append({"add": {"set": {**t, "name": f"{side}_offenders", "type": "ipv4_addr",
                                    "size": OFFENDERS_MAX,  # dynamic: nft sees the add
                                    "stmt": [{"counter": None}]}}})
        if sources:
            out.append({"add": {"element": {**t, "name": f"{side}_admit",
                                            "elem": sorted(sources)}}})
    saddr = {"payload": {"protocol": "ip", "field": "saddr"}}
    for side, _, _ in adm.sides():
        out.append({"add": {"chain": {**t, "name": side}}})
        out.append({"add": {"rule": {**t, "chain": side, "comment": f"{side} admit", "expr": [
            {"match": {"op": "==", "left": saddr, "right": f"@{side}_admit"}},
            {"accept": None}]}}})
        out.append({"add": {"rule": {**t, "chain": side, "comment": f"{side} offenders",
                                     "expr": [{"set": {"op": "add", "set": f"@{side}_offenders",
                                                       "elem": saddr}}]}}})
        out.append({"add": {"rule": {**t, "chain": side, "comment": f"{side} drop",
                                     "expr": [{"counter": None}, {"drop": None}]}}})
    out.append({"add": {"chain": {**t, "name": CHAIN, "type": "filter", "hook": "prerouting",
                                  "prio": -300, "policy": "accept"}}})
    out.append({"add": {"rule": {**t, "chain": CHAIN, "comment": "by address", "expr": [
        _match("udp", "dport", "==", VXLAN_PORT),
        {"vmap": {"key": {"payload": {"protocol": "ip", "field": "daddr"}},
                  "data": {"set": [[local, {"jump": {"target": side}}]
                                   for local, side in _locals(adm)]}}}]}}})
    return out


def read(listing: list[dict]) -> tuple[dict, IngressCounters]:
    """Pure: from ``list table`` output, (what is there: {"rules": sorted
    (chain, comment), "map": {address: side}, "sets": {name: sorted
    elements}}, the counters)."""
    there: dict = {"rules": [], "map": {}, "sets": {}}
    counters = IngressCounters()
    for item in listing:
        if "set" in item:
            s = item["set"]
            elems = s.get("elem") or []
            if s["name"].endswith("_offenders"):
                side = s["name"][:-len("_offenders")]
                counters.offenders[side] = {
                    e["elem"]["val"]: e["elem"].get("counter", {}).get("packets", 0)
                    for e in elems if isinstance(e, dict) and "elem" in e}
            else:
                there["sets"][s["name"]] = sorted(e if isinstance(e, str) else str(e)
                                                  for e in elems)
        elif "rule" in item:
            r = item["rule"]
            there["rules"].append((r["chain"], r.get("comment")))
            for e in r.get("expr", ()):
                if "vmap" in e:
                    for key, verdict in (e["vmap"].get("data", {}).get("set") or ()):
                        there["map"][key] = (verdict.get("jump") or {}).get("target")
                if "counter" in e and r.get("comment", "").endswith(" drop"):
                    counters.dropped[r["chain"]] = e["counter"].get("packets", 0)
    there["rules"].sort()
    return there, counters


def expected(adm: Admission) -> dict:
    """Pure: what :func:`read` finds in a table made by :func:`ruleset`."""
    rules = [(side, f"{side} {what}") for side, _, _ in adm.sides()
             for what in ("admit", "offenders", "drop")] + [(CHAIN, "by address")]
    return {"rules": sorted(rules), "map": dict(_locals(adm)),
            "sets": {f"{side}_admit": sorted(sources) for side, _, sources in adm.sides()}}


class NsThread:
    """One thread that enters ``netns`` (None: stays here) and runs the
    calls it is given, one at a time, in order; ``call`` returns what the
    call returned or raises what it raised.

    Not a ``concurrent.futures`` executor: its ``submit`` holds a global
    lock across the start of its worker thread, a lock that fork handlers
    take too, and pyroute2 opens its namespace sockets by forking from the
    agent's other threads. The agent's first pass once failed there with
    "release unlocked lock" (a restarted agent, 1 run in about 12 on a
    loaded machine)."""

    def __init__(self, netns: str | None, name: str):
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._entered: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, args=(netns,), name=name,
                                        daemon=True)
        self._thread.start()

    def _serve(self, netns: str | None) -> None:
        try:
            if netns:
                from pyroute2 import netns as pyroute2_netns
                pyroute2_netns.pushns(netns)
        except BaseException as exc:  # noqa: BLE001 - said by every call
            self._entered = exc
        while (item := self._calls.get()) is not None:
            func, args, box, done = item
            try:
                if self._entered is not None:
                    raise self._entered
                box.append((True, func(*args)))
            except BaseException as exc:  # noqa: BLE001 - raised in the caller
                box.append((False, exc))
            done.set()

    def call(self, func, *args):
        box: list = []
        done = threading.Event()
        self._calls.put((func, args, box, done))
        done.wait()
        ok, value = box[0]
        if ok:
            return value
        raise value

    def close(self) -> None:
        self._calls.put(None)
        self._thread.join()


class NftIngress:
    """The table in one network namespace (None: this one).

    Every libnftables call runs on one thread of its own that entered the
    namespace first and never leaves it (setns moves only the calling
    thread): the binding's netlink socket, and any it might open again,
    belong to the gateway's namespace, never the host's."""

    def __init__(self, netns: str | None = None):
        self.netns = netns
        nftables = _load_binding()
        self._worker = NsThread(netns, "nft")

        def make():
            nft = nftables.Nftables()
            nft.set_json_output(True)
            nft.set_handle_output(False)
            return nft
        try:
            self._nft = self._worker.call(make)
        except Exception as exc:  # noqa: BLE001 - the namespace or the library
            self._worker.close()
            raise IngressError(f"nftables in {netns or 'this namespace'}: {exc}") from None

    def run(self, commands: list[dict]) -> list[dict]:
        rc, out, err = self._worker.call(self._nft.json_cmd, {"nftables": commands})
        if rc != 0:
            raise IngressError(f"nftables refused: {str(err).strip()[:500]}")
        if isinstance(out, str):
            out = json.loads(out) if out.strip() else {}
        return [item for item in (out or {}).get("nftables", ()) if "metainfo" not in item]

    def close(self) -> None:
        self._worker.close()

    def _listing(self) -> list[dict] | None:
        try:
            return self.run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
        except IngressError as exc:
            if "No such file" in str(exc) or "does not exist" in str(exc):
                return None
            raise

    def sync(self, adm: Admission | None, keep: bool = False) -> IngressCounters:
        """Make the table say ``adm`` (None: no table); the counters.
        ``keep``: admit at least who is admitted now (a source has not
        answered yet, so whom it would admit is not known: an agent
        restarted must not drop its peers until it has read them)."""
        listing = self._listing()
        if adm is None:
            if listing is not None:
                self.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
            return IngressCounters()
        if listing is None:
            self.run(ruleset(adm))
            return IngressCounters()
        there, counters = read(listing)
        if keep:
            adm = dataclasses.replace(
                adm, site_sources=adm.site_sources | set(there["sets"].get("site_admit", ())),
                transit_sources=adm.transit_sources
                | set(there["sets"].get("transit_admit", ())))
        want = expected(adm)
        if there == want:
            return counters
        if there["rules"] == want["rules"] and there["map"] == want["map"]:
            # Only who is admitted changed: the sets' elements, in one
            # transaction; the offenders' counters stay.
            t = {"family": FAMILY, "table": TABLE}
            commands = []
            for name, elems in want["sets"].items():
                commands.append({"flush": {"set": {**t, "name": name}}})
                if elems:
                    commands.append({"add": {"element": {**t, "name": name, "elem": elems}}})
            self.run(commands)
            return counters
        LOG.warning("ingress filter: table %s %s is not as the agent made it; made again",
                    FAMILY, TABLE)
        self.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}] + ruleset(adm))
        return counters

    def remove(self) -> bool:
        if self._listing() is None:
            return False
        self.run([{"delete": {"table": {"family": FAMILY, "name": TABLE}}}])
        return True
