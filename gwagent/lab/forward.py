"""A TCP forwarder from lab namespaces to the host's loopback.

    python -m gwagent.lab.forward PORT NAMESPACE [NAMESPACE ...]

Listens on 127.0.0.1:PORT inside every NAMESPACE and carries each
connection to 127.0.0.1:PORT of the namespace it was started in (the
host's), byte for byte, both ways. Prints ``{"ready": true}`` once every
listener is open.

Why: a lab compute with Neutron's own Open vSwitch agent
(:mod:`gwagent.lab.ovs_agent`) runs that agent inside the compute's
namespace (it checks ``local_ip`` against the compute's devices, and its
OpenFlow controller listens on the compute's 127.0.0.1, where the
compute's own OVS connects), but the lab's RabbitMQ listens on the host's
loopback, and nothing of the lab may add a device or an address to the
root namespace. A socket keeps the namespace it was made in: the
listeners are made inside each namespace, and every connecting socket is
made in the host's namespace.
So the agent's configuration names 127.0.0.1:PORT as a deployer's names
the broker, and the lab's ``down`` stops this process with the others.
"""
from __future__ import annotations

import json
import socket
import sys
import threading

from pyroute2 import netns as pyroute2_netns


def listen_in(ns: str, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` inside namespace ``ns``
    (made there by pyroute2's helper, as the product's netlink sockets are)."""
    sock = pyroute2_netns.create_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _carry(conn: socket.socket, port: int) -> None:
    try:
        up = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        conn.close()
        return
    up.settimeout(None)
    for sock in (conn, up):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pipe, args=(up, conn), daemon=True)
    back.start()
    _pipe(conn, up)
    back.join()
    conn.close()
    up.close()


def _serve(listener: socket.socket, port: int) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_carry, args=(conn, port), daemon=True).start()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    port = int(argv[0])
    listeners = [listen_in(ns, port) for ns in argv[1:]]
    print(json.dumps({"ready": True, "port": port, "namespaces": argv[1:]}), flush=True)
    threads = [threading.Thread(target=_serve, args=(sock, port), daemon=True)
               for sock in listeners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
