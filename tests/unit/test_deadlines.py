"""Every call to a Neutron has a connect and a read deadline: a server that
accepts and never answers fails the call in about the read deadline, with
the cloud named, like any other error (a real socket on loopback)."""
import socket
import threading
import time

import pytest

from gwagent.control.sources import SourceError
from gwagent.control.views import SourceView
from gwagent.neutron.source import NeutronClient


@pytest.fixture
def silent_server():
    """Accepts connections, reads, never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
                held.append(conn)
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    thread.join(1)
    for conn in held:
        conn.close()
    srv.close()


def test_a_hung_api_fails_the_call_within_the_read_deadline(tmp_path, silent_server):
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds:\n  hung:\n    auth_type: none\n    auth:\n"
                      f"      endpoint: http://127.0.0.1:{silent_server}\n")
    client = NeutronClient("hung", str(clouds), timeout=(0.5, 0.5))
    start = time.monotonic()
    with pytest.raises(SourceError) as info:
        client.request("GET", "/ports")
    took = time.monotonic() - start
    assert "'hung'" in str(info.value)
    assert took < 5.0, f"a 0.5 s deadline took {took:.1f} s"


class Hanging:
    """A source whose read blocks until released (a frozen API, a dead mount)."""

    def __init__(self):
        self.release = threading.Event()

    def version(self):
        self.release.wait(10)
        raise SourceError("released")

    def snapshot(self):
        raise AssertionError("not reached")


def test_a_read_past_its_deadline_shows_hung_then_failing():
    now = [0.0]
    view = SourceView(Hanging(), "peer", deadline=2.0, clock=lambda: now[0])
    reader = threading.Thread(target=view.refresh, daemon=True)
    reader.start()
    while view.reading_since is None:
        time.sleep(0.001)
    assert view.state() == "unknown"
    now[0] = 3.0
    assert view.state() == "hung" and view.status()["reading_for"] == 3.0
    view.source.release.set()
    reader.join(5)
    assert view.state() == "failing" and view.error == "released"


class Late:
    """A source that answers, each answer ``delay`` seconds of the view's
    clock late (an API answering every request late)."""

    def __init__(self, now, snap):
        self.now, self.snap, self.delay = now, snap, 3.5

    def version(self):
        self.now[0] += self.delay
        return "v1"

    def snapshot(self):
        self.now[0] += self.delay
        return self.snap


def test_an_api_answering_later_than_the_deadline_is_stale_until_quick_again(caplog):
    from gwagent.model import Gateway, Site, SiteSnapshot
    now = [0.0]
    snap = SiteSnapshot(Site("b", Gateway("b-gw", "198.18.2.1", "198.18.0.2")), (), ())
    source = Late(now, snap)
    view = SourceView(source, "peer", deadline=3.0, clock=lambda: now[0])
    assert view.refresh(force=True) and view.snapshot == snap
    # it answered, but each read took past the deadline: never hung for
    # long (the read ends), never fresh either
    assert view.state() == "stale" and view.status()["last_read_s"] == 7.0
    view.refresh()
    assert view.state() == "stale" and view.status()["last_read_s"] == 3.5
    assert sum("slow" in r.getMessage() for r in caplog.records) == 1  # one line, not one a read
    source.delay = 0.2
    assert view.refresh() is True  # recovered: news for the loop
    assert view.state() == "fresh"
    assert any("recovered" in r.getMessage() for r in caplog.records)
