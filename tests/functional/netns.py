"""Throwaway network namespaces for functional tests and benchmarks.

Everything a test builds lives in a namespace it creates and removes, named
with a prefix of its own (``gwt-`` for tests, ``gwb-`` for benchmarks) and a
random suffix, so runs never collide and a leftover is easy to spot::

    with throwaway_netns("gwt-") as ns:
        ...   # ns is the name; removed on exit, even after a failure
"""
from __future__ import annotations

import contextlib
import secrets
import subprocess
from typing import Iterator

from pyroute2 import netns as pyroute2_netns


def new_name(prefix: str = "gwt-") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


def create(prefix: str = "gwt-") -> str:
    """Create a namespace with ``lo`` up; return its name."""
    name = new_name(prefix)
    pyroute2_netns.create(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def remove(name: str) -> None:
    """Delete a namespace (and with it every device inside); missing is fine."""
    if name in pyroute2_netns.listnetns():
        pyroute2_netns.remove(name)


@contextlib.contextmanager
def throwaway_netns(prefix: str = "gwt-") -> Iterator[str]:
    name = create(prefix)
    try:
        yield name
    finally:
        remove(name)


def run(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command inside the namespace (test setup and baselines only)."""
    return subprocess.run(["ip", "netns", "exec", name, *argv], check=check,
                          capture_output=True, text=True)
