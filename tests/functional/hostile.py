"""Hostile VXLAN frames for a gateway's underlay addresses (scapy's fuzzing).

What a gateway parses itself is the mobility evidence: frames that its tap's
BPF filter passes (a watched VNI and inner source MAC, to one of its
addresses) are decoded again in Python. :func:`frames` makes frames aimed
at exactly that path, so that they reach the decoder rather than only the
kernel's checks. :data:`FUZZED` of them are made by scapy's fuzzing, in
four kinds, round robin:

* a claim whose inner frame is fuzzed (``fuzz(Ether(src=MAC)/ARP())``);
* a fuzzed VXLAN header in front of a claim;
* a fuzzed outer IPv4 header (version, header length, fragment fields,
  lengths, options) with the rest well formed;
* a well-formed claim cut at a random length (at least an Ethernet header);

and the rest are those, mutated: cut short, or with one to eight bytes
past the Ethernet header replaced (scapy takes 5-9 ms to build a fuzzed
frame here; thousands would take a minute).

Everything is drawn from one ``random.Random(seed)`` (scapy's fuzzing uses
the ``random`` module: it is seeded too), so a failing run can be replayed.
"""
from __future__ import annotations

import logging
import random

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import fuzz

logging.getLogger("scapy").setLevel(logging.ERROR)  # its ARP hints, per frame

FUZZED = 400


def frames(count: int, seed: int, *, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str,
           vni: int, inner_src: str) -> list[bytes]:
    rng = random.Random(seed)
    random.seed(seed)

    def outer():
        return Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / UDP(
            sport=rng.randrange(49152, 65536), dport=4789)

    def claim():
        return Ether(src=inner_src, dst="ff:ff:ff:ff:ff:ff") / ARP(
            op=2, hwsrc=inner_src, psrc="198.19.99.1", pdst="198.19.99.1")
    out: list[bytes] = []
    for i in range(min(count, FUZZED)):
        kind = i % 4
        if kind == 0:
            frame = outer() / VXLAN(flags=0x08, vni=vni) / fuzz(Ether(src=inner_src, dst="ff:ff:ff:ff:ff:ff") / ARP())
        elif kind == 1:
            frame = outer() / fuzz(VXLAN()) / claim()
        elif kind == 2:
            frame = (Ether(src=src_mac, dst=dst_mac) / fuzz(IP(src=src_ip, dst=dst_ip, proto=17))
                     / UDP(dport=4789) / VXLAN(flags=0x08, vni=vni) / claim())
        else:
            whole = bytes(outer() / VXLAN(flags=0x08, vni=vni) / claim())
            out.append(whole[:rng.randrange(14, len(whole))])
            continue
        out.append(bytes(frame)[:1500])
    made = len(out)
    while len(out) < count:
        frame = bytearray(out[rng.randrange(made)])
        if len(frame) <= 15:
            frame += rng.randbytes(rng.randrange(1, 64))
        elif rng.random() < 0.3:
            del frame[rng.randrange(14, len(frame)):]
        else:
            for _ in range(rng.randint(1, 8)):
                frame[rng.randrange(14, len(frame))] = rng.randrange(256)
        out.append(bytes(frame))
    return out
