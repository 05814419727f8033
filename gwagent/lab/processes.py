"""The processes a lab starts, recorded so that only they are ever signalled.

Every process (agents, the L2 population emulator, Neutron, RabbitMQ, fault
proxies) runs in a session of its own with its output in
``<lab_dir>/<name>.log`` and is recorded in the lab's ``processes`` by pid
*and* kernel start time: ``down`` (from any process, after any crash) stops
exactly what the lab started and never a recycled pid. Lower ``order``
stops first. These functions need of a lab only ``lab_dir``,
``processes`` and ``save()``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def proc_start_time(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def process_alive(record: dict) -> bool:
    """True if the recorded process (same pid AND same start time) still runs."""
    info = proc_start_time(record["pid"])
    return info is not None and info[1] == record["start"] and info[0] not in ("Z", "X")


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def python_env() -> dict[str, str]:
    """The environment for a child Python that must import this gwagent."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH"))
                                        if p)
    return env


def start_process(lab, name: str, argv: list[str], env: dict | None = None,
                  group: bool = False, order: int = 0) -> dict:
    """Start ``argv`` in its own session, output to <lab_dir>/<name>.log; record it.

    ``group``: stop it by its process group (it forks helpers); ``order``:
    ``down`` stops lower orders first."""
    env = python_env() if env is None else env
    log = lab.lab_dir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=str(lab.lab_dir))
    info = proc_start_time(proc.pid)
    record = {"pid": proc.pid, "start": info[1] if info else None, "argv": argv,
              "log": str(log), "group": group, "order": order}
    lab.processes[name] = record
    lab.save()
    return record


def record_popen(lab, name: str, proc: subprocess.Popen, log: Path, order: int,
                 grace: float | None = None) -> None:
    """Record a process started elsewhere (in its own session) as the lab's;
    ``grace``: the seconds it gets to stop after SIGTERM, if not the default."""
    info = proc_start_time(proc.pid)
    lab.processes[name] = {"pid": proc.pid, "start": info[1] if info else None,
                           "argv": [str(a) for a in proc.args], "log": str(log),
                           "group": True, "order": order}
    if grace is not None:
        lab.processes[name]["grace"] = grace
    lab.save()


def stop_process(lab, name: str, timeout: float = 5.0) -> bool:
    """SIGTERM the recorded process, SIGKILL after ``timeout``; True if it ran."""
    return bool(stop_processes(lab, [name], timeout))


def stop_processes(lab, names, timeout: float = 5.0) -> list[str]:
    """Stop the recorded processes ``names`` together: SIGTERM to all, then
    SIGKILL to those still running after ``timeout`` (or the ``grace`` of
    their record). One after the other, a Neutron lab's ``down`` took
    30 s. Returns the names of those that ran."""
    records = {}
    for name in names:
        record = lab.processes.pop(name, None)
        if record is not None and record.get("start") is not None and process_alive(record):
            records[name] = record
    lab.save()
    running = dict(records)
    grace = max((r.get("grace", timeout) for r in records.values()), default=timeout)
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for record in running.values():
            # A session leader's pgid is its pid: its group holds the helpers it forked.
            kill = os.killpg if record.get("group") else os.kill
            with contextlib.suppress(ProcessLookupError):
                kill(record["pid"], sig)
        deadline = time.monotonic() + wait
        while running and time.monotonic() < deadline:
            for name, record in list(running.items()):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(record["pid"], os.WNOHANG)  # reap it if it is our child
                if not process_alive(record):
                    del running[name]
            if running:
                time.sleep(0.02)
    return list(records)


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0
