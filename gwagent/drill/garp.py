"""``gwagent drill garp``: move a VIP by one gratuitous ARP and measure it.

Per mode (own MAC, virtual MAC) and scope (inside the first site, across
to the second), the VIP starts on holder dr-h1; each run gives it to the
other holder and sends one GARP from there (scapy-built, from the drill);
the clock starts when the GARP leaves. The old holder keeps answering until
every client has settled on the new one, so a probe it still answers after
the new one did shows forwarding that did not follow the move.
Probes from a client in every site run all along, every millisecond. A run
ends when every client has had a steady stream of replies from the new
holder (or after ``timeout``), and the forwarding of every gateway, compute
and client is then checked against the new holder.
"""
from __future__ import annotations

import time

from gwagent.drill import check, report
from gwagent.drill.probes import Prober
from gwagent.drill.scenario import Scenario, place_vip, remove_vip, send_garp

STEADY = 20  # replies from the new holder that make a client's view settled
TAIL = 0.1   # seconds of probes kept after that
LEAD = 0.05  # and before the move


def settled(prober: Prober, holder: str, since: float) -> bool:
    return all(sum(1 for r in rec.replies[-STEADY * 3:]
                   if r.holder == holder and r.received > since) >= STEADY
               for rec in prober.records)


def wait_settled(prober: Prober, holder: str, since: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if settled(prober, holder, since):
            return True
        time.sleep(0.005)
    return settled(prober, holder, since)


def run(scenario: Scenario, modes, scopes, runs: int = 1, interval: float = 0.001,
        timeout: float = 3.0, progress=lambda msg: None) -> list[report.Move]:
    moves = []
    for mode in modes:
        for scope in scopes:
            a, b = scenario.pair(scope)
            clients = [(c.name, c.site, scenario.ns(c)) for c in scenario.clients]
            holders = [(h.name, scenario.ns(h)) for h in (a, b)]
            place_vip(scenario, a, mode)
            with Prober(clients, holders, scenario.vip, interval) as prober:
                t0 = send_garp(scenario, a, mode)
                if not wait_settled(prober, a.name, t0, timeout + 5):
                    progress(f"{mode} {scope}: the VIP on {a.name} is not answered by every "
                             "client before the first move; measuring anyway")
                current, other = a, b
                for i in range(1, runs + 1):
                    start = time.monotonic() - LEAD
                    # The new holder takes the VIP and announces it. The old
                    # one keeps answering until every client has settled on
                    # the new one: whatever still reaches it then is stale
                    # forwarding, counted as "old after".
                    place_vip(scenario, other, mode)
                    garp = send_garp(scenario, other, mode)
                    ok = wait_settled(prober, other.name, garp, timeout)
                    remove_vip(scenario, current)
                    time.sleep(TAIL)  # probes after the move, for the count and the plot
                    end = time.monotonic()
                    results = [report.analyse(rec, current.name, other.name, start, end, garp)
                               for rec in prober.records]
                    move = report.Move("garp", mode, scope, i, current.name, other.name,
                                       results, check.check(scenario, other, mode),
                                       note="" if ok else f"not settled within {timeout} s")
                    moves.append(move)
                    firsts = [c.first_reply_ms for c in results]
                    progress(f"garp {mode:<7} {scope:<5} run {i}/{runs}: {current.name} -> "
                             f"{other.name}: first reply "
                             + ", ".join(f"{c.client} {'NEVER' if c.first_reply_ms is None else f'{c.first_reply_ms:.2f} ms'}"
                                         for c in results)
                             + (f"; {len(move.stale)} STALE" if move.stale else "")
                             + (f" ({move.note})" if move.note else ""))
                    del firsts
                    current, other = other, current
            remove_vip(scenario, current)
    return moves
