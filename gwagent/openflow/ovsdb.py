"""The gateway's bridge and its VXLAN port, through OVSDB (ovsdbapp).

One bridge of ours (``gwa-ovs`` by default; userspace or kernel datapath as
configured), ``fail_mode=secure`` so that flows stay while the controller
is away and nothing is forwarded that we did not say, OpenFlow 1.4 only
(bundles), and the embedded controller as its only controller. One
flow-based VXLAN port (``remote_ip=flow local_ip=flow key=flow``) serves
both sides: two flow-based ports on one UDP port collide in one OVS
instance. The OFFENDERS and HIJACKERS tables have a flow limit (a
``Flow_Table`` row of the bridge's own). The names of the networks, which
no flow can carry, are kept in the bridge's ``external_ids`` (``gwagent-net-<transit VNI>``), as the Linux
backend keeps them in the bridge's alias. Nothing else in the database is
touched.
"""
from __future__ import annotations

import time
import warnings

with warnings.catch_warnings():
    # ovs.poller imports eventlet (an os-ken dependency) when it is there,
    # which warns that it is deprecated; the agent never uses eventlet.
    warnings.simplefilter("ignore")
    from ovsdbapp.backend.ovs_idl import connection
    from ovsdbapp.schema.open_vswitch import impl_idl

NET_KEY = "gwagent-net-"
#: flows.OFFENDERS and flows.HIJACKERS, bounded as the Linux filter's sets
BOUNDED_TABLES, OFFENDERS_MAX = (6, 8), 4096


class OvsdbError(Exception):
    pass


class Bridge:
    def __init__(self, endpoint: str, name: str, vxlan_port: str, controller: str,
                 datapath_type: str = "system", timeout: float = 10.0):
        self.name, self.vxlan_port, self.controller = name, vxlan_port, controller
        self.datapath_type = datapath_type
        try:
            idl = connection.OvsdbIdl.from_server(endpoint, "Open_vSwitch")
            self._conn = connection.Connection(idl=idl, timeout=timeout)
            # ovsdbapp keeps the first connection in a class attribute for the
            # whole process; a class of our own per bridge keeps each its own
            # (a test, or an agent reconnecting to a new ovsdb-server).
            api_cls = type("GatewayOvsdb", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self.api = api_cls(self._conn)
        except Exception as exc:  # noqa: BLE001 - ovs raises several kinds
            raise OvsdbError(f"cannot reach OVSDB at {endpoint}: "
                             f"{type(exc).__name__}: {exc!r}") from exc

    def ensure(self) -> int:
        """Make the bridge and its VXLAN port exist as described; return
        the port's OpenFlow number."""
        api = self.api
        with api.transaction(check_error=True) as txn:
            txn.add(api.add_br(self.name, datapath_type=self.datapath_type))
            txn.add(api.db_set("Bridge", self.name, ("fail_mode", "secure"),
                               ("protocols", ["OpenFlow14"]),
                               ("other_config", {"disable-in-band": "true"})))
            txn.add(api.set_controller(self.name, [self.controller]))
            # The offenders' and hijackers' tables (flows.py, OFFENDERS and
            # HIJACKERS) hold at most OFFENDERS_MAX flows each, the oldest
            # evicted: a flood of spoofed sources cannot grow them unbounded.
            limit = txn.add(api.db_create("Flow_Table", name="gwagent-bounded",
                                          flow_limit=OFFENDERS_MAX, overflow_policy="evict"))
            txn.add(api.db_set("Bridge", self.name,
                               ("flow_tables", {table: limit for table in BOUNDED_TABLES})))
            txn.add(api.add_port(self.name, self.vxlan_port))
            txn.add(api.db_set("Interface", self.vxlan_port, ("type", "vxlan"),
                               ("options", {"remote_ip": "flow", "local_ip": "flow",
                                            "key": "flow"})))
        deadline = time.monotonic() + 10
        while True:
            ofport = api.db_get("Interface", self.vxlan_port, "ofport").execute(check_error=True)
            if isinstance(ofport, list):
                ofport = ofport[0] if ofport else None
            if ofport and ofport > 0:
                return ofport
            if time.monotonic() > deadline:
                raise OvsdbError(f"port {self.vxlan_port} of {self.name} got no OpenFlow "
                                 f"number (ofport {ofport}): is it a valid VXLAN port?")
            time.sleep(0.05)

    def ofport(self) -> int | None:
        """The VXLAN port's OpenFlow number; None if the bridge or port is
        missing or not ready."""
        rows = self.api.db_find("Interface", ("name", "=", self.vxlan_port),
                                columns=["ofport"]).execute(check_error=True)
        ofport = rows[0]["ofport"] if rows else None
        if isinstance(ofport, list):
            ofport = ofport[0] if ofport else None
        exists = self.api.br_exists(self.name).execute(check_error=True)
        return ofport if exists and ofport and ofport > 0 else None

    def network_names(self) -> dict[int, str]:
        ids = self.api.db_get("Bridge", self.name, "external_ids").execute(check_error=True) or {}
        return {int(k[len(NET_KEY):]): v for k, v in ids.items()
                if k.startswith(NET_KEY) and k[len(NET_KEY):].isdigit()}

    def set_network_name(self, vni: int, name: str | None) -> None:
        if name is None:
            self.api.db_remove("Bridge", self.name, "external_ids", f"{NET_KEY}{vni}",
                               if_exists=True).execute(check_error=True)
        else:
            self.api.br_set_external_id(self.name, f"{NET_KEY}{vni}", name).execute(
                check_error=True)

    def remove(self) -> bool:
        existed = self.api.br_exists(self.name).execute(check_error=True)
        self.api.del_br(self.name).execute(check_error=True)
        return bool(existed)

    def close(self) -> None:
        try:
            self._conn.stop()
        except Exception:  # noqa: BLE001 - closing
            pass
