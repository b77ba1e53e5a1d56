"""The step registry is the one declaration of the steps: the config schema's plugin list agrees with it."""

from __future__ import annotations

from cl_ml_tools.data import config
from cl_ml_tools.steps import registry


def test_the_schema_offers_the_registrys_plugins() -> None:
    enabled = config.section_schema("plugins")["properties"]["enabled"]
    offered = sorted([*registry.PLUGINS, "archive"])
    assert sorted(enabled["items"]["enum"]) == sorted(enabled["default"]) == offered
