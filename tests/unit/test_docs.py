"""The operator's guide (docs/*.md) says only what the agent does.

* Every ```ini block is a gwagent configuration that gwagent.cli.load_conf
  reads, and every option in it is one the agent registers, with a value of
  its type (oslo.config itself ignores unknown options in a file, so the
  test asks for each one). A block whose first line is
  ``# ml2_conf.ini`` is Neutron's: it must list the driver under the name
  gwagent's entry point gives it, first.
* Every ``gwagent_...`` metric named in the guide is one the agent serves
  (scraped from gwagent.metrics on a real agent pass).
* Every ``gwagent ...`` command line in a code block parses with the
  agent's own command-line parser.

Each checker is also shown to fail on a wrong input.
"""
from __future__ import annotations

import pathlib
import re
import shlex
import tomllib

import pytest
import yaml
from oslo_config import cfg

from gwagent import cli
from gwagent.control.agent import Agent
from gwagent.control.sources import FileInventory, site_to_dict

from builders import endpoint, site
from fakes import FakeDataplane

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
METRIC = re.compile(r"\bgwagent_[a-z0-9_]+")
# gwagent_* words in the guide that are not metrics, each checked to be in the code.
NOT_METRICS = {"gwagent_remote": "network:gwagent_remote"}


def blocks(lang: str):
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text()):
            if m.group(1) == lang:
                line = doc.read_text()[:m.start()].count("\n") + 1
                yield f"{doc.name}:{line}", m.group(2)


def ini_problems(text: str, tmp_path: pathlib.Path) -> list[str]:
    """What is wrong with ``text`` as a gwagent configuration file."""
    path = tmp_path / "gwagent.conf"
    path.write_text(text)
    try:
        conf = cli.load_conf([str(path)])
    except (cfg.Error, SystemExit) as exc:
        return [f"does not load: {exc}"]
    sections: dict = {}
    cfg.ConfigParser(str(path), sections).parse()
    problems = []
    for section, options in sections.items():
        for name in options:
            group = None if section == "DEFAULT" else section
            try:
                holder = conf if group is None else conf[group]
                getattr(holder, name)
            except cfg.NoSuchOptError:
                problems.append(f"[{section}] {name}: no such option")
            except (cfg.ConfigFileValueError, ValueError) as exc:
                problems.append(f"[{section}] {name}: bad value: {exc}")
    return problems


def ml2_problems(text: str) -> list[str]:
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    name = next(iter(entry["neutron.ml2.mechanism_drivers"]))
    m = re.search(r"^mechanism_drivers\s*=\s*(\S+)", text, re.M)
    if "[ml2]" not in text or not m:
        return ["no [ml2] mechanism_drivers"]
    drivers = m.group(1).split(",")
    return [] if drivers[0] == name else [f"{name!r} is not first in {drivers}"]


def test_every_ini_block_of_the_guide_is_a_configuration_the_agent_reads(tmp_path):
    found = list(blocks("ini"))
    assert len(found) >= 4, "the guide has lost its configuration examples"
    bad = {}
    for where, text in found:
        if text.startswith("# ml2_conf.ini"):
            problems = ml2_problems(text)
        else:
            problems = ini_problems(text, tmp_path)
        if problems:
            bad[where] = problems
    assert not bad, bad


def test_the_ini_checker_catches_a_misspelt_option_a_bad_value_and_an_unknown_group(tmp_path):
    assert ini_problems("[gateway]\nsource = neutron\nnetns =\n", tmp_path) == []
    assert ini_problems("[gateway]\nsourc = neutron\n", tmp_path) == [
        "[gateway] sourc: no such option"]
    assert "bad value" in ini_problems("[agent]\nresync_interval = often\n", tmp_path)[0]
    # a peer group without its peer in [neutron] peers is no group of the agent's
    assert ini_problems("[neutron_peer_c]\ncloud = site-c\n", tmp_path) == [
        "[neutron_peer_c] cloud: no such option"]
    assert ml2_problems("[ml2]\nmechanism_drivers = openvswitch,gwagent\n")


def served_metric_names(tmp_path) -> set[str]:
    """Every metric name a scrape of a real agent can carry: families, and
    their samples (_total, _bucket, _count, _sum, _created) even when a
    counter has none yet."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from gwagent.metrics import Metrics
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(site_to_dict(site("a", [endpoint("a", "red", 1)]))))
    b.write_text(yaml.safe_dump(site_to_dict(site("b", [endpoint("b", "red", 2)]))))
    local = FileInventory(a)
    agent = Agent(local, [FileInventory(b)], local, FakeDataplane(),
                  status_path=tmp_path / "status.json")
    metrics = Metrics()
    metrics.watch(agent)
    agent.metrics = metrics
    assert agent.run_pass("start").ok
    metrics.requested("cloud-a", "GET", "200", 0.02)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                                 "_created")}
    names = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(s.name for s in family.samples)
    return names


def metric_problems(text: str, served: set[str]) -> list[str]:
    return sorted({name for name in METRIC.findall(text)
                   if name not in served and name not in NOT_METRICS})


def test_every_metric_the_guide_names_is_one_the_agent_serves(tmp_path):
    served = served_metric_names(tmp_path)
    text = "\n".join(doc.read_text() for doc in DOCS)
    named = set(METRIC.findall(text)) - set(NOT_METRICS)
    assert len(named) >= 10, "the guide has lost its metrics table"
    assert metric_problems(text, served) == []
    # the guide's table names every family the agent serves
    families = {n for n in served if not n.endswith(("_total", "_bucket", "_count", "_sum",
                                                     "_created"))}
    assert {f for f in families if f not in named and f + "_total" not in named} == set()
    # and the words that are not metrics are the code's own
    code = "\n".join(p.read_text() for p in (ROOT / "gwagent").rglob("*.py"))
    assert all(spelled in code for spelled in NOT_METRICS.values())


def test_the_metric_checker_catches_a_name_the_agent_does_not_serve(tmp_path):
    served = served_metric_names(tmp_path)
    assert metric_problems("`gwagent_passes_total` and `gwagent_pass_seconds`", served) == [
        "gwagent_pass_seconds"]


COMMAND = re.compile(r"^(?:/opt/gwagent/bin/)?gwagent (.*)$", re.M)


def command_problems(text: str) -> list[str]:
    problems = []
    for m in COMMAND.finditer(text):
        argv = shlex.split(m.group(1), comments=True)
        try:
            cli.parser(argv).parse_args(argv)
        except SystemExit:
            problems.append(f"gwagent {m.group(1)}")
    return problems


def test_every_command_line_of_the_guide_parses(capsys):
    found, bad = 0, {}
    for doc in DOCS:
        for m in FENCE.finditer(doc.read_text()):
            if m.group(1) in ("", "sh", "console"):
                found += len(COMMAND.findall(m.group(2)))
                problems = command_problems(m.group(2))
                if problems:
                    bad[doc.name] = problems
    assert found >= 8, "the guide has lost its command examples"
    assert not bad, bad
    assert command_problems("gwagent status --config-file x --jsn") == [
        "gwagent status --config-file x --jsn"]
