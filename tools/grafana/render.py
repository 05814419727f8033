"""Render the Grafana dashboard's panels from a running lab, without Grafana.

Grafana is not packaged for Debian, so the picture in the README is made
here: a real Prometheus (Debian's ``prometheus``, started by this script,
stopped by its PID) scrapes every agent of the lab once a second while a
workload runs; then every query of every panel of
``gwagent-dashboard.json`` is asked of it, as written (``$instance``
matches every agent; ``$__rate_interval`` is what Grafana would make of
it for 1 s scrapes, 4 s), and drawn with matplotlib in the dashboard's
grid. The workload starts once Prometheus holds a few samples of every
agent.

    python tools/grafana/render.py --prefix gwl- --seconds 90 \\
        --during '.venv/bin/gwagent drill garp --mode vmac --runs 3' \\
        --out tools/grafana/dashboard.png
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gwagent.lab import build  # noqa: E402
from gwagent.lab.names import default_lab_dir  # noqa: E402
from gwagent.lab.record import Lab  # noqa: E402

DASHBOARD = Path(__file__).with_name("gwagent-dashboard.json")
SCRAPE = 1  # seconds
RATE_INTERVAL = f"{4 * SCRAPE}s"  # Grafana: max(4 x scrape interval, step + scrape interval)


def query_range(base: str, expr: str, start: float, end: float) -> list[dict]:
    args = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": 1})
    with urllib.request.urlopen(f"{base}/api/v1/query_range?{args}", timeout=10) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt: str, labels: dict) -> str:
    text = fmt or ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"
    for key, value in labels.items():
        text = text.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return text


def draw(base: str, start: float, end: float, out: Path, title: str) -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p.get("type") == "timeseries"]
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(14, 2.6 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$instance", ".*")
                    .replace("$__rate_interval", RATE_INTERVAL))
            for series in query_range(base, expr, start, end):
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]))
        ax.set_title(panel["title"], fontsize=9)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, loc="upper left")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.supxlabel("seconds", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", default="gwl-", help="the lab's prefix (default gwl-)")
    ap.add_argument("--seconds", type=float, default=90.0, help="how long to record")
    ap.add_argument("--during", default="", help="a command to run while recording")
    ap.add_argument("--out", type=Path, default=Path("dashboard.png"))
    args = ap.parse_args(argv)

    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("render: needs Prometheus (apt-get install prometheus)")
    lab = Lab.load(default_lab_dir(args.prefix))
    # every gateway node's agent (two in a site with active/standby)
    targets = [u for u in (build.metrics_url(lab, s.name, n) for s in lab.topology.sites
                           for n in s.gateways) if u]
    if not targets:
        raise SystemExit("render: the lab's agents export no metrics")
    port = build.free_port()
    with tempfile.TemporaryDirectory(prefix="gwagent-prom-") as tmp:
        config = Path(tmp, "prometheus.yml")
        hosts = [urllib.parse.urlsplit(u).netloc for u in targets]
        config.write_text(json.dumps({
            "global": {"scrape_interval": f"{SCRAPE}s", "evaluation_interval": f"{SCRAPE}s"},
            "scrape_configs": [{"job_name": "gwagent",
                                "static_configs": [{"targets": hosts}]}]}))
        proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(Path(tmp, "prometheus.log"), "w"))
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{base}/-/ready", timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("render: Prometheus did not start: "
                                         + Path(tmp, "prometheus.log").read_text()[-2000:])
                    time.sleep(0.2)
            start = time.time()
            print(f"render: recording {args.seconds:.0f} s of {', '.join(hosts)}",
                  file=sys.stderr)
            deadline = time.monotonic() + 30
            while len(query_range(base, "count_over_time(up[1m]) >= 3", start - 60,
                                  time.time())) < len(hosts):
                if time.monotonic() > deadline:
                    raise SystemExit("render: Prometheus scrapes no agent")
                time.sleep(0.5)
            if args.during:
                subprocess.run(shlex.split(args.during), check=False)
            time.sleep(max(0.0, start + args.seconds - time.time()))
            end = time.time()
            draw(base, start, end, args.out,
                 f"The gwagent dashboard's queries on lab {args.prefix} (sites "
                 f"{', '.join(s.name for s in lab.topology.sites)}, source {lab.truth.kind}): "
                 f"Prometheus, drawn by tools/grafana/render.py (Grafana is not installed here)")
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"render: wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
