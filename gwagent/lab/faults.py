"""Faults injected into a Neutron lab's control plane: ``gwagent lab fault``.

Why
    A gateway must never wait on another failure domain (DESIGN.md, the
    independent-failure-domains issue). The lab makes the failures a cloud's
    control plane has, on demand and under traffic, so that this can be
    shown and measured:

    ============  ===========================================================
    api-freeze    the site's Neutron API (uwsgi and its workers) SIGSTOPped:
                  connections are accepted by the kernel, nothing answers
    api-kill      the API killed (SIGKILL): connections refused
    api-error     every request answered ``500`` (by the site's fault proxy)
    api-slow      every request delayed (``--delay``, default 3 s) by the proxy
    rabbit-stop   the lab's RabbitMQ stopped (every site's RPC bus)
    clear         back to normal: SIGCONT, API restarted, proxy passing,
                  RabbitMQ started again
    ============  ===========================================================

How
    The lab's truth gives the control plane to break
    (:meth:`~gwagent.lab.truth.Truth.control_plane`; a file lab has none):
    its processes, signalled by their recorded PID and process group, never
    by name, and the fault proxy in front of every site's API
    (:mod:`gwagent.lab.faultproxy`), whose mode this module sets.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time

from gwagent.lab import faultproxy
from gwagent.lab.names import LabError
from gwagent.lab.processes import process_alive, stop_process

FAULTS = ("api-freeze", "api-kill", "api-error", "api-slow", "rabbit-stop", "clear")


class FaultError(LabError):
    pass


def _control_plane(lab):
    plane = lab.truth.control_plane()
    if plane is None:
        raise FaultError(f"faults need a Neutron lab (lab up --neutron); this lab's truth is "
                         f"{lab.truth.kind}")
    return plane


def _signal_group(lab, name: str, sig: int) -> bool:
    record = lab.processes.get(name)
    if record is None or not process_alive(record):
        return False
    os.killpg(record["pid"], sig)
    return True


def inject(lab, site: str | None, fault: str, delay: float = 3.0) -> str:
    """Inject ``fault`` into ``site`` (or the lab, for rabbit-stop); returns
    what was done, in words."""
    plane = _control_plane(lab)
    if fault not in FAULTS:
        raise FaultError(f"unknown fault {fault!r} (one of: {', '.join(FAULTS)})")
    if fault != "rabbit-stop" and site not in plane.sites:
        raise FaultError(f"no site {site!r} (sites: {', '.join(plane.sites)})")
    api = plane.api(site)
    if fault == "api-freeze":
        if not _signal_group(lab, api, signal.SIGSTOP):
            raise FaultError(f"the API of site {site} is not running")
        return f"site {site}: Neutron API frozen (SIGSTOP)"
    if fault == "api-kill":
        if not _signal_group(lab, api, signal.SIGKILL):
            raise FaultError(f"the API of site {site} is not running")
        record = lab.processes[api]
        deadline = time.monotonic() + 10
        while process_alive(record) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record["pid"], os.WNOHANG)  # reap it if it is our child
            time.sleep(0.05)
        return f"site {site}: Neutron API killed"
    if fault == "api-error":
        faultproxy.set_mode(plane.proxy_control(site), "error", status=500)
        return f"site {site}: Neutron API answers 500 to every request"
    if fault == "api-slow":
        faultproxy.set_mode(plane.proxy_control(site), "slow", delay=delay)
        return f"site {site}: Neutron API answers every request {delay:g} s late"
    if fault == "rabbit-stop":
        stop_process(lab, plane.rabbit)
        return "RabbitMQ stopped"
    return clear(lab, site)


def clear(lab, site: str | None) -> str:
    """Undo every fault of ``site`` (all sites when None), RabbitMQ too."""
    plane = _control_plane(lab)
    done = []
    for name in ([site] if site else plane.sites):
        faultproxy.set_mode(plane.proxy_control(name))
        record = lab.processes.get(plane.api(name))
        if record is not None and process_alive(record):
            os.killpg(record["pid"], signal.SIGCONT)
        else:
            plane.restart_api(name)
            done.append(f"site {name}: API restarted")
    rabbit = lab.processes.get(plane.rabbit)
    if rabbit is None or not process_alive(rabbit):
        plane.restart_rabbit()
        done.append("RabbitMQ started")
    return "cleared" + (f" ({'; '.join(done)})" if done else "")
