"""Offline unless allowed (recipe_checks.network): the libraries' own switches are set for the time of
recipe-checks' work and put back afterwards, so a host project's tests keep the network they had."""

from __future__ import annotations

import os
import sys
import types

import huggingface_hub.constants
import pytest

from recipe_checks.network import OFFLINE_ENVIRONMENT, offline
from tests.conftest import GOOD_RECIPE


@pytest.fixture
def online(monkeypatch):
    for name in (*OFFLINE_ENVIRONMENT, "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", False)


def test_inside_the_block_every_library_is_offline_and_afterwards_as_it_was(online, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")  # a host's own setting comes back as it was
    with offline():
        assert {name: os.environ[name] for name in OFFLINE_ENVIRONMENT} == OFFLINE_ENVIRONMENT
        assert huggingface_hub.constants.is_offline_mode() and huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY
    assert not any(name in os.environ for name in OFFLINE_ENVIRONMENT if name != "WANDB_MODE")
    assert os.environ["WANDB_MODE"] == "online"
    assert not huggingface_hub.constants.is_offline_mode() and not huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY


def test_a_library_first_imported_inside_the_block_gets_what_the_environment_says_afterwards(online, monkeypatch):
    monkeypatch.delitem(sys.modules, "datasets.config", raising=False)
    with offline():  # datasets imported now reads the offline environment at its import
        monkeypatch.setitem(sys.modules, "datasets.config", types.SimpleNamespace(HF_HUB_OFFLINE=True,
                                                                                   HF_DATASETS_OFFLINE=True))
    assert sys.modules["datasets.config"].HF_HUB_OFFLINE is False
    assert sys.modules["datasets.config"].HF_DATASETS_OFFLINE is False


def test_with_the_network_allowed_nothing_is_touched(online):
    with offline(allow_network=True):
        assert not any(name in os.environ for name in OFFLINE_ENVIRONMENT)
        assert not huggingface_hub.constants.is_offline_mode()


def test_a_host_projects_test_after_the_recipes_keeps_its_network_settings(pytester, online):
    pytester.makefile(".yaml", recipe=GOOD_RECIPE)
    pytester.makepyfile(test_host="""
        import os

        import huggingface_hub.constants


        def test_online():
            assert "HF_HUB_OFFLINE" not in os.environ and not huggingface_hub.constants.is_offline_mode()
        """)
    result = pytester.runpytest("recipe.yaml", "test_host.py", "-k", "schema or online", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
