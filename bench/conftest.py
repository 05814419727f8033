"""Shared fixtures of the benchmarks, and the report hook.

Benchmarks run only on demand (the test suite is tests/)::

    .venv/bin/pytest bench -p no:cacheprovider --benchmark-only

Each builds what it measures in throwaway namespaces prefixed ``gwb-`` and
records its figures through the ``figures`` fixture; at the end of the run
bench/report.py prints one table and writes bench/results.md and .json.
"""
from __future__ import annotations

import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "functional"))

import report  # noqa: E402
from netns import throwaway_netns  # noqa: E402

FIGURES = pytest.StashKey[dict]()


def pytest_configure(config):
    config.stash[FIGURES] = {}


def pytest_collection_modifyitems(items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="benchmarks need root (namespaces)")
        for item in items:
            item.add_marker(skip)


@pytest.fixture
def figures(request) -> dict:
    """Where a benchmark records {key: {"seconds": ..., "entries": ...}}."""
    return request.config.stash[FIGURES]


@pytest.fixture
def netns():
    with throwaway_netns("gwb-") as name:
        yield name


def pytest_terminal_summary(terminalreporter, config):
    figures = config.stash.get(FIGURES, {})
    if not figures:
        return
    rows = report.build_rows(figures)
    command = " ".join(["pytest", *config.invocation_params.args])
    report.write(rows, figures, HERE, command)
    terminalreporter.write_sep("=", "gwagent benchmark report (bench/results.md)")
    terminalreporter.write(report.render(rows))
