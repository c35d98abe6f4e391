"""Models without weights: every bundled config builds on the meta device; the lookup order holds."""

from __future__ import annotations

import json

import pytest

from recipe_checks.models.resolve import BUNDLED_DIR, ModelResolutionError, bundled_ids, bundled_index, resolve_model_config
from recipe_checks.models.skeleton import ModelBuildError, build_meta_model
from tests.conftest import write_hub_cache

REQUIRED = [
    "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B",
    "mistralai/Mistral-7B-v0.1", "mistralai/Mixtral-8x7B-v0.1", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-72B",
    "Qwen/Qwen3-8B", "google/gemma-2-9b", "google/gemma-3-4b-pt", "microsoft/Phi-3-mini-4k-instruct",
    "microsoft/Phi-3.5-mini-instruct", "openai-community/gpt2", "tiiuae/falcon-7b", "HuggingFaceTB/SmolLM2-1.7B",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
]
# Advertised sizes, in billions of parameters, with the tolerance a name like "8B" carries.
ADVERTISED = {"meta-llama/Llama-3.1-8B": 8.0, "meta-llama/Llama-3.1-70B": 70.6, "mistralai/Mixtral-8x7B-v0.1": 46.7,
              "Qwen/Qwen2.5-1.5B": 1.54, "openai-community/gpt2": 0.124}


def test_the_required_families_are_bundled():
    assert set(REQUIRED) <= set(bundled_ids())


def test_every_bundled_entry_names_its_source():
    for entry in {e.hub_id: e for e in bundled_index().values()}.values():
        assert entry.source.startswith("https://huggingface.co/"), entry.hub_id
        assert (BUNDLED_DIR / entry.file).exists()


@pytest.mark.parametrize("hub_id", sorted(bundled_ids()))
def test_every_bundled_config_builds_on_the_meta_device(hub_id):
    model = build_meta_model(resolve_model_config(hub_id))
    assert all(p.device.type == "meta" for p in model.parameters())
    if hub_id in ADVERTISED:
        billions = sum(p.numel() for p in model.parameters()) / 1e9
        assert abs(billions - ADVERTISED[hub_id]) / ADVERTISED[hub_id] < 0.02


def test_ids_and_aliases_are_case_insensitive():
    assert resolve_model_config("META-LLAMA/llama-3.1-8b").model_type == "llama"


def test_the_hub_cache_comes_before_the_bundled_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    tiny = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256}
    write_hub_cache(tmp_path, "meta-llama/Llama-3.1-8B", tiny)
    resolved = resolve_model_config("meta-llama/Llama-3.1-8B")
    assert resolved.source == "huggingface_hub cache"
    assert resolved.config["hidden_size"] == 64


def test_model_config_path_is_relative_to_the_recipe(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    resolved = resolve_model_config("my-org/private", "cfg", base_dir=tmp_path)
    assert resolved.model_type == "gpt2"


def test_unknown_model_suggests_bundled_ids_and_how_to_get_the_config():
    with pytest.raises(ModelResolutionError) as info:
        resolve_model_config("meta-llama/Llama-3.1-8b-instruc")
    assert "Did you mean 'meta-llama/Llama-3.1-8B" in info.value.help
    assert "`hf download meta-llama/Llama-3.1-8b-instruc config.json`" in info.value.help
    assert info.value.missing  # not here offline: RC106 warns, the recipe is not wrong


def test_a_config_that_is_not_a_transformers_config_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text("{\"hidden_size\": 1}")
    with pytest.raises(ModelResolutionError, match="has no 'model_type'"):
        resolve_model_config(None, str(tmp_path / "config.json"))


def test_remote_code_architectures_are_never_built_without_opt_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "my_custom_arch", "auto_map": {"AutoConfig": "x.Y"}}))
    resolved = resolve_model_config(None, str(tmp_path / "config.json"))
    with pytest.raises(ModelBuildError) as info:
        build_meta_model(resolved)
    assert info.value.rule_id == "RC107"


class HubContacted(BaseException):
    """Not an Exception: a broad `except Exception` in the code under test cannot swallow it."""


@pytest.fixture
def hub_contacts(monkeypatch) -> list[str]:
    """Every way out to the hub (huggingface_hub's downloads, any socket) records itself and raises."""
    import socket

    import huggingface_hub
    import huggingface_hub.file_download as file_download

    contacts: list[str] = []

    def refuse(what: str):
        def contact(*args, **kwargs):
            contacts.append(what)
            raise HubContacted(what)
        return contact

    for module, name in [(huggingface_hub, "hf_hub_download"), (huggingface_hub, "snapshot_download"),
                         (file_download, "hf_hub_download"), (file_download, "get_hf_file_metadata")]:
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    return contacts


def test_network_is_not_used_unless_allowed(hub_contacts):
    with pytest.raises(ModelResolutionError) as info:
        resolve_model_config("some-org/not-bundled-anywhere")
    assert hub_contacts == []
    assert "--recipes-allow-network" in info.value.help


def test_the_hub_guard_sees_the_download_when_network_is_allowed(hub_contacts):
    # the guard of the test above must be able to fail: with network allowed, the download reaches it
    with pytest.raises(HubContacted):
        resolve_model_config("some-org/not-bundled-anywhere", allow_network=True)
    assert hub_contacts == ["huggingface_hub.hf_hub_download"]
