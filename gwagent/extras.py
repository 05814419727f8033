"""The optional parts of gwagent and the error that names a missing one.

The base install is the agent with the Linux backend (pyproject.toml's
``dependencies``); every other feature is an extra, installed on the hosts
that use it: ``neutron`` (the Neutron source), ``openflow`` (the OpenFlow
backend), ``drills`` (``gwagent drill``), ``lab`` (``gwagent lab``). A
feature calls :func:`require` before it imports its dependencies, so a host
without the extra is told what to install instead of shown a
``ModuleNotFoundError`` from deep inside the feature.
"""
from __future__ import annotations

import importlib.util


class MissingExtra(ImportError):
    """A feature's dependencies are not installed; the message says which
    extra brings them and the command that installs it."""

    def __init__(self, feature: str, extra: str, missing: list[str]):
        self.feature, self.extra, self.missing = feature, extra, missing
        super().__init__(
            f"{feature} needs gwagent[{extra}]: pip install 'gwagent[{extra}]' "
            f"(not installed: {', '.join(missing)})", name=missing[0])


def missing(*modules: str) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (found by
    their spec, so nothing is imported)."""
    absent = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing or broken
            found = False
        if not found:
            absent.append(module)
    return absent


def require(extra: str, *modules: str, feature: str | None = None) -> None:
    """Raise :class:`MissingExtra` unless every module of ``modules`` (the
    top-level modules the extra installs) can be imported.

    ``feature`` is what the user asked for, in their words (``backend =
    openflow``); by default the extra's name."""
    absent = missing(*modules)
    if absent:
        raise MissingExtra(feature or extra, extra, absent)
