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
    In a Neutron lab every site's API has a small HTTP proxy in front of it
    (``python -m gwagent.lab.faults proxy``, a lab process like the others):
    the ``lab-<site>`` clouds.yaml entries, which the gateways use, go
    through it; the lab's own work (the cloud's insides: creating VMs'
    ports, the L2 population of its computes) uses ``lab-<site>-direct``.
    The proxy reads its mode from ``<lab_dir>/faults/<site>.json`` at every
    request. Processes are signalled by their recorded PID and process group,
    never by name.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import os
import signal
import socketserver
import sys
import time
from pathlib import Path

FAULTS = ("api-freeze", "api-kill", "api-error", "api-slow", "rabbit-stop", "clear")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade",
               "te", "trailer"}


class FaultError(RuntimeError):
    pass


def control_file(lab, site: str) -> Path:
    return lab.lab_dir / "faults" / f"{site}.json"


def set_mode(lab, site: str, mode: str = "pass", **params) -> None:
    from gwagent.control.sources import atomic_write
    atomic_write(control_file(lab, site), json.dumps({"mode": mode, **params}) + "\n")


def mode_of(lab, site: str) -> dict:
    try:
        return json.loads(control_file(lab, site).read_text())
    except (OSError, ValueError):
        return {"mode": "pass"}


# -- the proxy -------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    control: Path = Path("/nonexistent")

    def log_message(self, fmt, *args):  # quiet: the API logs requests itself
        pass

    def _mode(self) -> dict:
        try:
            return json.loads(self.control.read_text())
        except (OSError, ValueError):
            return {"mode": "pass"}

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        mode = self._mode()
        if mode.get("mode") == "slow":
            time.sleep(float(mode.get("delay", 3.0)))
        if mode.get("mode") == "error":
            self._json(int(mode.get("status", 500)), "injected by gwagent lab fault")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Connection"] = "close"
        try:
            conn = http.client.HTTPConnection(*self.upstream, timeout=120)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            self._json(502, f"the API behind the fault proxy does not answer: {exc}")
            return
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    def _json(self, status: int, message: str) -> None:
        payload = json.dumps({"NeutronError": {"type": "HTTPError", "message": message,
                                               "detail": ""}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _forward


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(listen: int, upstream: int, control: Path) -> None:
    handler = type("Handler", (_Handler,), {"upstream": ("127.0.0.1", upstream),
                                            "control": control})
    server = _Server(("127.0.0.1", listen), handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(json.dumps({"proxy": listen, "upstream": upstream}), flush=True)
    server.serve_forever()


def start_proxies(lab) -> None:
    """A fault proxy in front of every site's API (passing, to begin with)."""
    from gwagent.lab import build
    from gwagent.lab import neutron as lab_neutron
    for site, info in lab.neutron["sites"].items():
        port = lab_neutron.free_port()
        set_mode(lab, site)
        build.start_process(lab, f"neutron-{site}-proxy",
                            [sys.executable, "-m", "gwagent.lab.faults", "proxy", str(port),
                             str(info["port"]), str(control_file(lab, site))], order=3)
        info["proxy_url"] = f"http://127.0.0.1:{port}"
        info["proxy_port"] = port
    lab.save()
    deadline = time.monotonic() + 10
    for info in lab.neutron["sites"].values():
        while not lab_neutron._port_open(info["proxy_port"]):
            if time.monotonic() > deadline:
                raise FaultError(f"fault proxy on port {info['proxy_port']} did not start")
            time.sleep(0.05)
    lab_neutron.write_clouds(lab)


# -- faults ----------------------------------------------------------------------

def _signal_group(lab, name: str, sig: int) -> bool:
    from gwagent.lab import build
    record = lab.processes.get(name)
    if record is None or not build.process_alive(record):
        return False
    os.killpg(record["pid"], sig)
    return True


def inject(lab, site: str | None, fault: str, delay: float = 3.0) -> str:
    """Inject ``fault`` into ``site`` (or the lab, for rabbit-stop); returns
    what was done, in words."""
    from gwagent.lab import build
    if lab.neutron is None:
        raise FaultError("faults need a Neutron lab (lab up --neutron)")
    if fault not in FAULTS:
        raise FaultError(f"unknown fault {fault!r} (one of: {', '.join(FAULTS)})")
    if fault != "rabbit-stop" and site not in lab.neutron["sites"]:
        raise FaultError(f"no site {site!r} (sites: {', '.join(lab.neutron['sites'])})")
    api = f"neutron-{site}-api"
    if fault == "api-freeze":
        if not _signal_group(lab, api, signal.SIGSTOP):
            raise FaultError(f"the API of site {site} is not running")
        return f"site {site}: Neutron API frozen (SIGSTOP)"
    if fault == "api-kill":
        if not _signal_group(lab, api, signal.SIGKILL):
            raise FaultError(f"the API of site {site} is not running")
        record = lab.processes[api]
        deadline = time.monotonic() + 10
        while build.process_alive(record) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record["pid"], os.WNOHANG)  # reap it if it is our child
            time.sleep(0.05)
        return f"site {site}: Neutron API killed"
    if fault == "api-error":
        set_mode(lab, site, "error", status=500)
        return f"site {site}: Neutron API answers 500 to every request"
    if fault == "api-slow":
        set_mode(lab, site, "slow", delay=delay)
        return f"site {site}: Neutron API answers every request {delay:g} s late"
    if fault == "rabbit-stop":
        build.stop_process(lab, "rabbit")
        return "RabbitMQ stopped"
    return clear(lab, site)


def clear(lab, site: str | None) -> str:
    """Undo every fault of ``site`` (all sites when None), RabbitMQ too."""
    from gwagent.lab import build
    from gwagent.lab import neutron as lab_neutron
    done = []
    for name in ([site] if site else list(lab.neutron["sites"])):
        set_mode(lab, name)
        api = f"neutron-{name}-api"
        record = lab.processes.get(api)
        if record is not None and build.process_alive(record):
            os.killpg(record["pid"], signal.SIGCONT)
        else:
            lab_neutron.restart_api(lab, name)
            done.append(f"site {name}: API restarted")
    rabbit = lab.processes.get("rabbit")
    if rabbit is None or not build.process_alive(rabbit):
        lab_neutron.run_rabbit(lab)
        done.append("RabbitMQ started")
    return "cleared" + (f" ({'; '.join(done)})" if done else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gwagent.lab.faults")
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="run a site's fault proxy")
    proxy.add_argument("listen", type=int)
    proxy.add_argument("upstream", type=int)
    proxy.add_argument("control", type=Path)
    args = parser.parse_args(argv)
    serve(args.listen, args.upstream, args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
