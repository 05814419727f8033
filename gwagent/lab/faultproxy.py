"""The fault proxy in front of a Neutron lab site's API (``gwagent lab fault``).

In a Neutron lab every site's API has this small HTTP proxy in front of it,
a lab process like the others (``python -m gwagent.lab.faultproxy LISTEN
UPSTREAM CONTROL``): the ``lab-<site>`` clouds.yaml entries, which the
gateways use, go through it; the lab's own work (the cloud's insides:
creating VMs' ports, the L2 population of its computes) uses
``lab-<site>-direct``. The proxy reads its mode from its control file
(``<lab_dir>/faults/<site>.json``) at every request: ``pass``, ``error``
(answer ``status``, default 500) or ``slow`` (``delay`` seconds first).
A module of its own (it was part of :mod:`gwagent.lab.faults`) so that the
Neutron lab starts proxies without importing what injects faults.
"""
from __future__ import annotations

import argparse
import http.client
import http.server
import json
import signal
import socketserver
import sys
import time
from pathlib import Path

from gwagent.control.sources import atomic_write

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade",
               "te", "trailer"}


def control_file(lab_dir: Path, site: str) -> Path:
    return Path(lab_dir) / "faults" / f"{site}.json"


def set_mode(control: Path, mode: str = "pass", **params) -> None:
    atomic_write(control, json.dumps({"mode": mode, **params}) + "\n")


def mode_of(control: Path) -> dict:
    try:
        return json.loads(Path(control).read_text())
    except (OSError, ValueError):
        return {"mode": "pass"}


def argv(listen: int, upstream: int, control: Path) -> list[str]:
    """The command line of a proxy on ``listen`` in front of ``upstream``."""
    return [sys.executable, "-m", "gwagent.lab.faultproxy", str(listen), str(upstream),
            str(control)]


# -- the proxy -------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    control: Path = Path("/nonexistent")

    def log_message(self, fmt, *args):  # quiet: the API logs requests itself
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        mode = mode_of(self.control)
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


def main(argv_: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gwagent.lab.faultproxy",
                                     description="a Neutron lab site's fault proxy")
    parser.add_argument("listen", type=int)
    parser.add_argument("upstream", type=int)
    parser.add_argument("control", type=Path)
    args = parser.parse_args(argv_)
    serve(args.listen, args.upstream, args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
