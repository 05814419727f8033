"""What a drill measured: per move and client, as a table, JSON and a plot.

For one move (the VIP from ``old`` to ``new``), per client, from its probes
and the replies:

* ``first_reply_ms``: from the reference event (the GARP on the wire) to
  the first reply from the new holder;
* ``outage_ms``: from the last reply of the old holder to the first of the
  new one (what a caller of the VIP lives through);
* ``lost``: probes sent during the move that no one answered;
* ``old_after``: replies from the old holder after the new one answered
  (a split brain, or forwarding that still points at the old place).
"""
from __future__ import annotations

import dataclasses
import json
import statistics

from gwagent.drill.probes import ClientRecord

IN_FLIGHT = 0.05  # probes sent this close to the end may still be answered


@dataclasses.dataclass
class ClientResult:
    client: str
    site: str
    first_reply_ms: float | None
    outage_ms: float | None
    lost: int
    old_after: int
    timeline: list = dataclasses.field(default_factory=list, repr=False)  # (sent ms, holder)

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("timeline")
        return data


@dataclasses.dataclass
class Move:
    drill: str
    mode: str
    scope: str
    run: int
    old: str
    new: str
    clients: list[ClientResult]
    checks: list = dataclasses.field(default_factory=list)
    failure_ms: float | None = None     # the failure, relative to the GARP (vrrp)
    note: str = ""

    @property
    def stale(self) -> list:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict:
        return {"drill": self.drill, "mode": self.mode, "scope": self.scope, "run": self.run,
                "old": self.old, "new": self.new, "failure_ms": self.failure_ms,
                "note": self.note, "clients": [c.to_dict() for c in self.clients],
                "checks": len(self.checks), "stale": [c.to_dict() for c in self.stale]}


def analyse(rec: ClientRecord, old: str, new: str, start: float, end: float,
            ref: float) -> ClientResult:
    """One client's view of one move; times are monotonic seconds, ``ref``
    the event first_reply_ms is measured from."""
    replies = [r for r in rec.replies if start <= r.sent <= end]
    first = min((r for r in replies if r.holder == new and r.received >= ref),
                key=lambda r: r.received, default=None)
    outage = old_after = None
    if first is not None:
        before = [r.received for r in replies if r.holder == old and r.received < first.received]
        outage = round((first.received - max(before)) * 1000, 3) if before else None
        old_after = sum(1 for r in replies if r.holder == old and r.received > first.received)
    answered = {r.seq for r in replies}
    sent = [(seq, t) for seq, t in rec.sent if start <= t <= end - IN_FLIGHT]
    lost = sum(1 for seq, _ in sent if seq not in answered)
    holder_of = {r.seq: r.holder for r in replies}
    timeline = [(round((t - ref) * 1000, 3), holder_of.get(seq)) for seq, t in sent]
    return ClientResult(rec.name, rec.site,
                        round((first.received - ref) * 1000, 3) if first else None,
                        outage, lost, old_after if old_after is not None else 0, timeline)


def summary(moves: list[Move]) -> list[dict]:
    """Per (drill, mode, scope): medians and totals over runs and clients."""
    groups: dict[tuple, list[Move]] = {}
    for move in moves:
        groups.setdefault((move.drill, move.mode, move.scope), []).append(move)
    out = []
    for (drill, mode, scope), group in groups.items():
        results = [c for m in group for c in m.clients]
        firsts = [c.first_reply_ms for c in results if c.first_reply_ms is not None]
        outages = [c.outage_ms for c in results if c.outage_ms is not None]
        out.append({
            "drill": drill, "mode": mode, "scope": scope, "runs": len(group),
            "first_reply_ms_median": _median(firsts), "first_reply_ms_max": max(firsts)
            if firsts else None,
            "outage_ms_median": _median(outages),
            "outage_ms_max": max(outages) if outages else None,
            "never_answered": sum(1 for c in results if c.first_reply_ms is None),
            "lost": sum(c.lost for c in results),
            "old_after": sum(c.old_after for c in results),
            "stale": sum(len(m.stale) for m in group),
        })
    return out


def _median(values):
    return round(statistics.median(values), 3) if values else None


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(moves: list[Move]) -> str:
    lines = [f"{'DRILL':<5} {'MODE':<8} {'SCOPE':<5} {'RUN':>3} {'MOVE':<14} {'CLIENT':<10} "
             f"{'SITE':<5} {'FIRST REPLY ms':>14} {'OUTAGE ms':>10} {'LOST':>5} "
             f"{'OLD AFTER':>9}  STALE"]
    for m in moves:
        for i, c in enumerate(m.clients):
            stale = (str(len(m.stale)) if m.stale else "0") if i == 0 else ""
            lines.append(f"{m.drill:<5} {m.mode:<8} {m.scope:<5} {m.run:>3} "
                         f"{m.old + '>' + m.new:<14} {c.client:<10} {c.site:<5} "
                         f"{_ms(c.first_reply_ms) if c.first_reply_ms is not None else 'NEVER':>14} "
                         f"{_ms(c.outage_ms):>10} {c.lost:>5} {c.old_after:>9}  {stale}")
    lines += ["", f"{'DRILL':<5} {'MODE':<8} {'SCOPE':<5} {'RUNS':>4} {'FIRST REPLY ms':>15} "
                  f"{'(max)':>8} {'OUTAGE ms':>10} {'(max)':>8} {'LOST':>5} {'OLD AFTER':>9} "
                  f"{'STALE':>5} {'NEVER':>5}"]
    for s in summary(moves):
        lines.append(f"{s['drill']:<5} {s['mode']:<8} {s['scope']:<5} {s['runs']:>4} "
                     f"{_ms(s['first_reply_ms_median']):>15} {_ms(s['first_reply_ms_max']):>8} "
                     f"{_ms(s['outage_ms_median']):>10} {_ms(s['outage_ms_max']):>8} "
                     f"{s['lost']:>5} {s['old_after']:>9} {s['stale']:>5} "
                     f"{s['never_answered']:>5}")
    stale = [(m, c) for m in moves for c in m.stale]
    if stale:
        lines += ["", "STALE ENTRIES (forwarding that does not lead to the current holder):"]
        for m, c in stale:
            lines.append(f"  {m.mode} {m.scope} run {m.run}: {c.node}: {c.what}: expected "
                         f"{c.expected}, found {c.found}")
    else:
        checks = sum(len(m.checks) for m in moves)
        lines += ["", f"no stale entry ({checks} forwarding checks after the moves)"]
    return "\n".join(lines)


def to_json(moves: list[Move], extra: dict | None = None) -> str:
    return json.dumps({**(extra or {}), "summary": summary(moves),
                       "moves": [m.to_dict() for m in moves]}, indent=1)


def plot(moves: list[Move], path: str) -> None:
    """A timeline per (mode, scope), first run: each client's probes by send
    time around the GARP (0 ms), coloured by who answered, with the
    failure, the GARP and each client's first reply from the new holder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts = {}
    for m in moves:
        firsts.setdefault((m.drill, m.mode, m.scope), m)
    panels = list(firsts.values())
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 2.2 + 1.3 * len(panels)),
                             squeeze=False)
    colours = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for ax, m in zip(axes[:, 0], panels):
        span = max([c.first_reply_ms or 0 for c in m.clients] + [m.failure_ms or 0, 0])
        lo = min(-20.0, (m.failure_ms or 0) - 20, -0.2 * span)
        hi = max(20.0, 1.3 * span + 5)
        for row, c in enumerate(m.clients):
            for who in sorted({h for _, h in c.timeline}, key=str):
                xs = [t for t, h in c.timeline if h == who and lo <= t <= hi]
                if who is None:
                    ax.scatter(xs, [row] * len(xs), marker="x", s=14, c="tab:red",
                               label="lost" if row == 0 else None, linewidths=0.8)
                else:
                    colour = colours.setdefault(who, palette[len(colours) % len(palette)])
                    ax.scatter(xs, [row] * len(xs), marker="|", s=60, c=colour,
                               label=f"answered by {who}")
            if c.first_reply_ms is not None:
                ax.scatter([c.first_reply_ms], [row], marker="*", s=120, c="gold",
                           edgecolors="black", zorder=5,
                           label="first reply from new holder" if row == 0 else None)
        ax.axvline(0, color="black", linestyle="--", linewidth=1, label="GARP on the wire")
        if m.failure_ms is not None:
            ax.axvline(m.failure_ms, color="tab:red", linewidth=1.5,
                       label="node back (NICs up)" if m.mode == "giveback"
                       else "failure (NIC down)")
        ax.set_yticks(range(len(m.clients)))
        ax.set_yticklabels([f"{c.client} ({c.site})" for c in m.clients])
        ax.set_xlim(lo, hi)
        ax.set_ylim(-0.7, len(m.clients) - 0.3)
        ax.set_title(f"{m.drill} {m.mode} {m.scope}: {m.old} -> {m.new} (run {m.run})",
                     fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        seen = {}
        for h, lab in zip(handles, labels):
            seen.setdefault(lab, h)
        ax.legend(seen.values(), seen.keys(), fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("ms from the GARP (probes at their send time; the star: the first "
                           "reply from the new holder, at its arrival)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
