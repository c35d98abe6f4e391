"""Tiny-random model fixtures: the shrunk configs keep each architecture, the cache holds them as
huggingface_hub does, builds are deterministic, reused, rebuilt when broken, and load offline."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from recipe_checks.cli import EXIT_OK, EXIT_USAGE, main
from recipe_checks.fixtures import cache as fixture_cache
from recipe_checks.fixtures.cache import (
    FIXTURE_NAMESPACE,
    bundled_models,
    cached_fixtures,
    ensure_fixture,
    find_fixture,
    fixture_repo_id,
    module_layout,
)
from recipe_checks.fixtures.pytest_fixtures import tiny_random_model  # noqa: F401  (until the plugin registers it)
from recipe_checks.fixtures.tiny import TINY_VOCAB, FixtureError, full_config_object, tiny_config
from recipe_checks.models.resolve import ResolvedModel, bundled_ids
from recipe_checks.models.skeleton import build_meta_model
from tests.conftest import RECIPES, REPO

SMALL = "HuggingFaceTB/SmolLM2-135M"  # the cheapest full model to build on the meta device
BUNDLED = {model.name: model for model in bundled_models()}


@pytest.fixture(scope="session")
def tiny_fixture_cache(tmp_path_factory) -> Path:
    """recipe-checks' own tests never write into the user's huggingface_hub cache."""
    return tmp_path_factory.mktemp("hub-cache")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: fixtures come from the cache only."""
    def refuse(*args, **kwargs):
        raise AssertionError("a fixture tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _tiny_object(name: str):
    return full_config_object(tiny_config(BUNDLED[name].config))


def _snapshot_bytes(path: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


# -- the tiny configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in bundled_ids() if "model_type" in BUNDLED[n].config])  # FLUX: test_flux.py
def test_every_bundled_config_gives_a_tiny_model_of_the_same_class_and_module_names_that_trains(name):
    import transformers

    full = BUNDLED[name]
    tiny = ResolvedModel(name=f"{name} (tiny)", config=tiny_config(full.config), source="test")
    expected = module_layout(build_meta_model(full))
    assert module_layout(build_meta_model(tiny, fresh=True)) == expected
    assert len(expected) > 10  # the layout really is a module tree, not an empty model

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(full_config_object(tiny.config))
    assert type(model).__name__ == type(build_meta_model(full)).__name__
    assert model.config.get_text_config().num_hidden_layers == 2
    assert sum(p.numel() * p.element_size() for p in model.parameters()) < 2 * 2**20
    ids = torch.randint(3, TINY_VOCAB - 8, (2, 24))  # clear of the special ids moved to the top
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert math.isfinite(loss.item())
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert all("vision" in n or "multi_modal" in n for n in no_grad)  # a text batch leaves the vision tower out
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# Keys tiny_config may change: the sizes and what depends on them.
_SHRUNK = {"num_hidden_layers", "n_layer", "hidden_size", "n_embd", "num_attention_heads", "n_head",
           "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "num_local_experts",
           "num_experts", "num_experts_per_tok", "moe_intermediate_size",  # Qwen MoE's expert sizes
           "shared_expert_intermediate_size",  # Qwen1.5-MoE's shared expert
           "layer_types", "max_window_layers", "query_pre_attn_scalar", "rope_scaling", "image_size",
           "mm_tokens_per_image", "short_factor", "long_factor",
           # a diffusers FluxTransformer2DModel's sizes
           "num_layers", "num_single_layers", "attention_head_dim", "joint_attention_dim", "pooled_projection_dim",
           "axes_dims_rope"}


def _changed_keys(full: dict, tiny: dict, where: str = "") -> list[str]:
    changed = []
    for key, value in full.items():
        if key in ("auto_map", "quantization_config"):
            continue
        if isinstance(value, dict) and isinstance(tiny.get(key), dict):
            changed += _changed_keys(value, tiny[key], f"{where}{key}.")
        elif tiny.get(key, "<dropped>") != value and key not in _SHRUNK and not key.endswith(
                ("_token_id", "_token_index")):
            changed.append(where + key)
    return changed


@pytest.mark.parametrize("name", bundled_ids())
def test_tiny_config_keeps_every_key_that_does_not_size_the_model(name):
    config = BUNDLED[name].config
    assert _changed_keys(config, tiny_config(config)) == []


@pytest.mark.parametrize(("name", "kv_heads"), [
    ("HuggingFaceTB/SmolLM2-1.7B", 4),  # multi-head attention stays multi-head
    ("meta-llama/Llama-3.1-8B", 2),  # grouped-query (32/8) stays grouped: 2 groups
    ("google/gemma-2-9b", 2),  # ratio 2 kept exactly
    ("google/gemma-3-1b-pt", 1),  # multi-query stays multi-query
    ("google/gemma-3-4b-pt", 2),  # a sparse text_config: the 8/4 defaults are read from transformers
])
def test_tiny_attention_keeps_its_kind(name, kv_heads):
    text = _tiny_object(name).get_text_config()
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, kv_heads)
    assert text.hidden_size == 64


def test_falcon_keeps_multi_query_attention_under_its_own_names():
    tiny = tiny_config(BUNDLED["tiiuae/falcon-7b"].config)
    assert (tiny["multi_query"], tiny["new_decoder_architecture"], tiny["num_attention_heads"]) == (True, False, 4)
    model = build_meta_model(ResolvedModel("falcon tiny", tiny, "test"), fresh=True)
    # query_key_value packs 4 query heads and one shared key and value head of 16.
    assert model.transformer.h[0].self_attention.query_key_value.out_features == (4 + 2) * 16


def test_gpt2_is_shrunk_under_its_own_names():
    tiny = tiny_config(BUNDLED["openai-community/gpt2"].config)
    assert (tiny["n_layer"], tiny["n_embd"], tiny["n_head"], tiny["vocab_size"]) == (2, 64, 4, TINY_VOCAB)
    assert "num_hidden_layers" not in tiny and "hidden_size" not in tiny


@pytest.mark.parametrize("name", ["google/gemma-2-9b", "google/gemma-3-1b-pt", "google/gemma-3-27b-pt"])
def test_two_tiny_layers_keep_the_mix_of_sliding_and_full_attention(name):
    assert _tiny_object(name).get_text_config().layer_types == ["sliding_attention", "full_attention"]


def test_qwen_sliding_window_layers_stay_after_the_full_ones():
    config = {**BUNDLED["Qwen/Qwen2.5-7B"].config, "use_sliding_window": True, "sliding_window": 4096,
              "max_window_layers": 14}
    tiny = tiny_config(config)
    assert tiny["max_window_layers"] == 1
    assert full_config_object(tiny).layer_types == ["full_attention", "sliding_attention"]
    assert tiny_config(BUNDLED["Qwen/Qwen2.5-7B"].config)["max_window_layers"] == 2  # 28 of 28: all full


def test_gemma_query_scalar_follows_the_tiny_head_size():
    assert tiny_config(BUNDLED["google/gemma-2-9b"].config)["query_pre_attn_scalar"] == 16  # was head_dim 256
    assert tiny_config(BUNDLED["google/gemma-2-27b"].config)["query_pre_attn_scalar"] == 16  # was 4608/32


def test_longrope_factors_have_one_entry_per_rotary_frequency():
    full = BUNDLED["microsoft/Phi-3.5-mini-instruct"].config["rope_scaling"]
    rope = tiny_config(BUNDLED["microsoft/Phi-3.5-mini-instruct"].config)["rope_scaling"]
    assert len(rope["short_factor"]) == len(rope["long_factor"]) == 16 // 2
    assert (rope["long_factor"][0], rope["long_factor"][-1]) == (full["long_factor"][0], full["long_factor"][-1])
    assert rope["type"] == "longrope"


def test_token_ids_past_the_tiny_vocabulary_move_to_its_top_and_stay_distinct():
    llama = tiny_config({**BUNDLED["meta-llama/Llama-3.1-8B"].config, "eos_token_id": [128001, 128008, 128009]})
    assert (llama["bos_token_id"], llama["eos_token_id"]) == (508, [509, 510, 511])
    gemma = tiny_config(BUNDLED["google/gemma-3-4b-pt"].config)
    assert (gemma["boi_token_index"], gemma["eoi_token_index"], gemma["image_token_index"]) == (509, 510, 511)
    phi = tiny_config(BUNDLED["microsoft/Phi-3-mini-4k-instruct"].config)
    assert (phi["bos_token_id"], phi["eos_token_id"], phi["pad_token_id"]) == (1, 511, 511)  # small ids stay


def test_mixtral_gets_four_small_experts_two_per_token():
    tiny = _tiny_object("mistralai/Mixtral-8x7B-v0.1")
    assert (tiny.num_local_experts, tiny.num_experts_per_tok, tiny.intermediate_size) == (4, 2, 128)


def test_a_vision_tower_is_shrunk_with_its_pooling_kernel_kept():
    tiny = tiny_config(BUNDLED["google/gemma-3-4b-pt"].config)
    vision = tiny["vision_config"]
    assert (vision["num_hidden_layers"], vision["hidden_size"], vision["patch_size"]) == (2, 64, 14)
    # 896/14 = 64 patches a side pooled 4x4 into 16x16 tokens; the tiny one pools 8x8 patches into 2x2.
    assert (vision["image_size"], tiny["mm_tokens_per_image"]) == (14 * 4 * 2, 4)


def test_a_model_type_transformers_does_not_ship_is_refused_without_running_remote_code(tmp_path):
    config = {"model_type": "my_remote_arch", "auto_map": {"AutoConfig": "configuration_x.XConfig"},
              "hidden_size": 4096, "num_hidden_layers": 32}
    with pytest.raises(FixtureError, match="never runs"):
        tiny_config(config)
    with pytest.raises(FixtureError, match="my_remote_arch"):
        ensure_fixture(ResolvedModel("org/remote", config, "test"), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tiny_config_drops_remote_code_pointers_and_quantization():
    config = {**BUNDLED[SMALL].config, "auto_map": {"AutoModel": "x.Y"},
              "quantization_config": {"quant_method": "gptq", "bits": 4}}
    tiny = tiny_config(config)
    assert "auto_map" not in tiny and "quantization_config" not in tiny


# -- naming ----------------------------------------------------------------------------------------------
def test_the_repo_id_names_the_model_and_hashes_the_tiny_config():
    from huggingface_hub.utils import validate_repo_id

    model = BUNDLED["meta-llama/Llama-3.1-8B"]
    repo_id = fixture_repo_id(model, tiny_config(model.config))
    assert repo_id.startswith(f"{FIXTURE_NAMESPACE}/Llama-3.1-8B-") and len(repo_id.split("-")[-1]) == 10
    local = ResolvedModel("configs/my model/config.json", model.config, "configs/my model/config.json (model.config)")
    assert fixture_repo_id(local, tiny_config(model.config)).startswith(f"{FIXTURE_NAMESPACE}/llama-")
    odd = ResolvedModel("org/" + "x--y..z " * 30, model.config, "huggingface_hub cache")
    for resolved in (model, local, odd):
        validate_repo_id(fixture_repo_id(resolved, tiny_config(model.config)))  # raises on a bad id
    changed = {**model.config, "rope_theta": 1.0}
    assert fixture_repo_id(model, tiny_config(changed)) != repo_id  # another tiny config, another repo


# -- the cache -------------------------------------------------------------------------------------------
def test_building_in_two_empty_caches_gives_the_same_revision_and_the_same_bytes(tmp_path):
    for name in (SMALL, "google/gemma-3-4b-pt"):  # a bfloat16 text model; a multimodal one with a vision tower
        torch.manual_seed(1)
        first = ensure_fixture(BUNDLED[name], cache_dir=tmp_path / "one")
        state = torch.random.get_rng_state()
        torch.manual_seed(2)  # the caller's random state does not enter the fixture
        second = ensure_fixture(BUNDLED[name], cache_dir=tmp_path / "two")
        assert first.built and second.built
        assert (first.repo_id, first.revision) == (second.repo_id, second.revision)
        assert _snapshot_bytes(first.path) == _snapshot_bytes(second.path)
        torch.manual_seed(1)
        ensure_fixture(BUNDLED[name], cache_dir=tmp_path / "three")
        assert torch.equal(torch.random.get_rng_state(), state)  # nor does building change it


def test_the_files_name_no_installed_version_and_no_time(tmp_path):
    import transformers
    from safetensors import safe_open

    fixture = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path)
    config = json.loads((fixture.path / "config.json").read_text())
    assert config == tiny_config(BUNDLED[SMALL].config)
    generation = json.loads((fixture.path / "generation_config.json").read_text())
    assert generation["transformers_version"] == BUNDLED[SMALL].config["transformers_version"] != transformers.__version__
    with safe_open(fixture.path / "model.safetensors", "pt") as weights:
        assert weights.metadata() == {"format": "pt"}


def test_the_snapshot_is_laid_out_as_huggingface_hub_caches_it(tiny_fixture_cache):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    fixture = ensure_fixture(BUNDLED[SMALL], cache_dir=tiny_fixture_cache)
    repo_dir = tiny_fixture_cache / ("models--" + fixture.repo_id.replace("/", "--"))
    assert (repo_dir / "refs" / "main").read_text() == fixture.revision
    assert fixture.path == repo_dir / "snapshots" / fixture.revision
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        link = fixture.path / name
        assert link.is_symlink() and os.readlink(link).startswith("../../blobs/")
        assert try_to_load_from_cache(fixture.repo_id, name, cache_dir=tiny_fixture_cache) == str(link)
    info = scan_cache_dir(tiny_fixture_cache)
    assert info.warnings == [] and not info.incomplete_files
    (repo,) = [r for r in info.repos if r.repo_id == fixture.repo_id]
    (revision,) = repo.revisions
    assert (revision.commit_hash, revision.refs) == (fixture.revision, frozenset({"main"}))
    assert sorted(f.file_name for f in revision.files) == ["config.json", "generation_config.json", "model.safetensors"]
    assert revision.size_on_disk == fixture.size_bytes
    assert [p.name for p in repo_dir.iterdir()] != [] and not list(repo_dir.glob(".recipe-checks-tmp-*"))


def test_a_second_ensure_fixture_reuses_the_cached_snapshot(tiny_fixture_cache, monkeypatch):
    first = ensure_fixture(BUNDLED[SMALL], cache_dir=tiny_fixture_cache)
    blobs = {p: p.stat().st_mtime_ns for p in first.path.parent.parent.joinpath("blobs").iterdir()}

    def no_build(*args, **kwargs):
        raise AssertionError("an intact fixture was rebuilt")

    monkeypatch.setattr(fixture_cache, "build_fixture_files", no_build)
    again = ensure_fixture(BUNDLED[SMALL], cache_dir=tiny_fixture_cache)
    assert (again.built, again.revision, again.path) == (False, first.revision, first.path)
    assert {p: p.stat().st_mtime_ns for p in blobs} == blobs
    assert find_fixture(BUNDLED[SMALL], cache_dir=tiny_fixture_cache) == again


def test_the_fixture_loads_through_from_pretrained_from_the_cache_only(tmp_path, monkeypatch, no_network):
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # huggingface_hub's default cache
    fixture = ensure_fixture(BUNDLED["mistralai/Mixtral-8x7B-v0.1"])
    model, info = AutoModelForCausalLM.from_pretrained(fixture.repo_id, local_files_only=True,
                                                       output_loading_info=True)
    assert type(model).__name__ == "MixtralForCausalLM" and model.dtype == torch.bfloat16
    # Every weight came from the file: nothing was left to random initialisation at load.
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids = torch.randint(3, 400, (2, 16))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert math.isfinite(loss.item())
    elsewhere = ensure_fixture(BUNDLED["mistralai/Mixtral-8x7B-v0.1"], cache_dir=tmp_path / "elsewhere")
    reloaded = elsewhere.load(dtype=torch.float32)  # a cache that is not the default one
    assert torch.allclose(reloaded.lm_head.weight, model.lm_head.weight.float())


_OFFLINE_CHILD = """
import json, sys
from transformers import AutoModelForCausalLM
from recipe_checks.fixtures.cache import bundled_models, ensure_fixture
model = [m for m in bundled_models() if m.name == sys.argv[1]][0]
fixture = ensure_fixture(model)  # no cache_dir: huggingface_hub's own, from HF_HUB_CACHE
loaded = AutoModelForCausalLM.from_pretrained(fixture.repo_id)  # offline: found in the cache or fails
print(json.dumps({"built": fixture.built, "revision": fixture.revision, "class": type(loaded).__name__}))
"""


@pytest.mark.slow
def test_the_fixture_loads_with_hf_hub_offline_in_a_fresh_process(tiny_fixture_cache):
    fixture = ensure_fixture(BUNDLED[SMALL], cache_dir=tiny_fixture_cache)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tiny_fixture_cache)}
    child = subprocess.run([sys.executable, "-c", _OFFLINE_CHILD, SMALL], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.splitlines()[-1]) == {
        "built": False, "revision": fixture.revision, "class": "LlamaForCausalLM"}


def _alter_weights(snapshot: Path) -> None:
    data = bytearray((snapshot / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (snapshot / "model.safetensors").write_bytes(bytes(data))  # through the link: the blob itself changes


def _truncate_weights(snapshot: Path) -> None:
    target = snapshot / "model.safetensors"
    target.write_bytes(target.read_bytes()[: 1000])  # a half-written file


def _drop_a_file(snapshot: Path) -> None:
    (snapshot / "generation_config.json").unlink()


def _delete_a_blob(snapshot: Path) -> None:
    os.unlink(snapshot / os.readlink(snapshot / "model.safetensors"))  # the link dangles


def _point_main_elsewhere(snapshot: Path) -> None:
    (snapshot.parent.parent / "refs" / "main").write_text("f" * 40)


def _add_a_file(snapshot: Path) -> None:
    (snapshot / "stray.bin").write_bytes(b"x")


@pytest.mark.parametrize("breakage", [_alter_weights, _truncate_weights, _drop_a_file, _delete_a_blob,
                                      _point_main_elsewhere, _add_a_file], ids=lambda f: f.__name__.strip("_"))
def test_a_broken_snapshot_is_rebuilt_and_scan_cache_dir_sees_no_warnings(tmp_path, breakage):
    from huggingface_hub import scan_cache_dir

    good = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path)
    expected = _snapshot_bytes(good.path)
    breakage(good.path)
    assert find_fixture(BUNDLED[SMALL], cache_dir=tmp_path) is None
    fixed = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path)
    assert (fixed.built, fixed.revision) == (True, good.revision)
    assert _snapshot_bytes(fixed.path) == expected
    info = scan_cache_dir(tmp_path)
    assert info.warnings == []
    (revision,) = next(iter(info.repos)).revisions  # the broken one is gone, not left beside it
    assert revision.refs == frozenset({"main"})
    assert ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path).built is False


# -- a cache someone else wrote ---------------------------------------------------------------------------
def _rehash_as_a_snapshot(repo_dir: Path, files: dict[str, bytes]) -> Path:
    """What an attacker with write access to the cache does: lay out altered files under the commit id their
    own contents give, and point refs/main at it, as recipe-checks' earlier self-consistency check wanted."""
    digests = {name: fixture_cache.hashlib.sha256(data).hexdigest() for name, data in files.items()}
    commit = fixture_cache._commit(digests)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def _nan_weights(good: Path) -> dict[str, bytes]:
    from safetensors.torch import load, save

    tensors = load((good / "model.safetensors").read_bytes())
    name = next(n for n in sorted(tensors) if n.endswith("q_proj.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    return {**_snapshot_bytes(good), "model.safetensors": save(tensors, metadata={"format": "pt"})}


def test_nan_weights_under_a_rehashed_snapshot_name_are_not_taken_from_the_cache(tmp_path):
    good = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path)
    planted = _rehash_as_a_snapshot(good.path.parent.parent, _nan_weights(good.path))
    shutil.rmtree(good.path)  # only the planted one is left, and refs/main names it
    assert find_fixture(BUNDLED[SMALL], cache_dir=tmp_path) is None
    fixed = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path)
    assert (fixed.built, fixed.revision) == (True, good.revision) and fixed.path != planted
    model = fixed.load()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_planted_adapter_fails_the_snapshot_and_is_never_attached_at_load(tmp_path):
    good = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path)
    adapter = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"],
               "base_model_name_or_path": good.repo_id, "task_type": "CAUSAL_LM"}
    from safetensors.torch import save

    lora_a = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(8, 64),
              "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.full((64, 8), 1e4)}
    files = {**_snapshot_bytes(good.path), "adapter_config.json": json.dumps(adapter).encode(),
             "adapter_model.safetensors": save(lora_a)}
    shutil.rmtree(good.path)
    _rehash_as_a_snapshot(good.path.parent.parent, files)  # the snapshot's name is its contents' commit id
    assert find_fixture(BUNDLED[SMALL], cache_dir=tmp_path) is None
    fixed = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path)
    assert fixed.built and not (fixed.path / "adapter_config.json").exists()
    assert not hasattr(fixed.load(), "peft_config")


def _link_the_weights_out_of_the_cache(snapshot: Path) -> None:
    data = (snapshot / "model.safetensors").read_bytes()
    outside = snapshot.parent.parent.parent.parent / "outside" / fixture_cache._etag("model.safetensors", data)
    outside.parent.mkdir()
    outside.write_bytes(data)  # the same bytes, outside the cache, under the blob's own name
    (snapshot / "model.safetensors").unlink()
    os.symlink(outside, snapshot / "model.safetensors")


def _blob_links_to_dev_zero(snapshot: Path) -> None:
    blob = snapshot / os.readlink(snapshot / "model.safetensors")
    blob.unlink()
    os.symlink("/dev/zero", blob)


def _fifo_as_a_snapshot_file(snapshot: Path) -> None:
    (snapshot / "config.json").unlink()
    os.mkfifo(snapshot / "config.json")


def _fifo_as_refs_main(snapshot: Path) -> None:
    ref = snapshot.parent.parent / "refs" / "main"
    ref.unlink()
    os.mkfifo(ref)


def _blobs_folder_links_elsewhere(snapshot: Path) -> None:
    blobs = snapshot.parent.parent / "blobs"
    elsewhere = blobs.parent.parent.parent / "elsewhere-blobs"
    shutil.move(blobs, elsewhere)
    os.symlink(elsewhere, blobs)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("plant", [_link_the_weights_out_of_the_cache, _blob_links_to_dev_zero, _fifo_as_a_snapshot_file,
                                   _fifo_as_refs_main, _blobs_folder_links_elsewhere],
                         ids=lambda f: f.__name__.strip("_"))
def test_links_out_fifos_and_devices_in_the_cache_are_never_read_and_are_replaced(tmp_path, plant):
    """Each would hang a read, read until MemoryError or take bytes from outside the cache: the verification
    opens nothing but regular files, without following links or blocking; the rebuild replaces them."""
    cache = tmp_path / "cache"
    good = ensure_fixture(BUNDLED[SMALL], cache_dir=cache)
    expected = _snapshot_bytes(good.path)
    plant(good.path)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(find_fixture(BUNDLED[SMALL], cache_dir=cache)), daemon=True)
    worker.start()
    worker.join(60)
    assert done == [None], "the verification hung on the planted file, or took it"
    fixed = ensure_fixture(BUNDLED[SMALL], cache_dir=cache)
    assert (fixed.built, fixed.revision) == (True, good.revision)
    assert _snapshot_bytes(fixed.path) == expected
    for entry in fixed.path.iterdir():  # the links are the cache's own again
        assert not entry.is_symlink() or (fixed.path / os.readlink(entry)).resolve().is_relative_to(cache.resolve())
    assert find_fixture(BUNDLED[SMALL], cache_dir=cache) == dataclasses.replace(fixed, built=False)


def test_a_fixture_cache_that_cannot_be_written_is_a_fixture_cache_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(fixture_cache.FixtureCacheError, match="cannot write the tiny-random model .* into the fixture cache"):
        ensure_fixture(BUNDLED[SMALL], cache_dir=blocker / "cache")


def test_concurrent_builds_of_one_fixture_build_it_once(tmp_path):
    barrier = threading.Barrier(4)
    results, errors = [], []

    def build():
        barrier.wait()
        try:
            results.append(ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path))
        except Exception as exc:  # reported below, with the others' results
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(f.built for f in results) == [False, False, False, True]
    assert len({f.revision for f in results}) == 1
    assert find_fixture(BUNDLED[SMALL], cache_dir=tmp_path) is not None


@pytest.mark.slow
def test_two_processes_building_one_fixture_at_once_leave_it_intact(tmp_path):
    command = [sys.executable, "-m", "recipe_checks.cli", "fixtures", "build", "--cache-dir", str(tmp_path), SMALL]
    children = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    states = sorted(out.splitlines()[0].split()[2] for out, _ in outputs)
    assert states == ["built", "cached"]
    assert find_fixture(BUNDLED[SMALL], cache_dir=tmp_path) is not None


def test_the_default_cache_is_huggingface_hubs_own(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    fixture = ensure_fixture(BUNDLED[SMALL])
    assert fixture.cache_dir == tmp_path / "hub" and fixture.path.is_relative_to(tmp_path / "hub")


def test_without_symlinks_the_snapshot_holds_the_files_themselves(tmp_path, monkeypatch):
    monkeypatch.setattr(fixture_cache, "_symlinks_work", lambda folder: False)
    fixture = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path / "copies")
    assert not any(f.is_symlink() for f in fixture.path.iterdir())
    linked = ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path / "links")
    assert fixture.revision == linked.revision
    assert ensure_fixture(BUNDLED[SMALL], cache_dir=tmp_path / "copies").built is False


@pytest.mark.slow
def test_build_all_builds_every_bundled_model_once_and_then_finds_them(tmp_path):
    fixtures = fixture_cache.build_all(tmp_path)
    assert [f.model_name for f in fixtures] == sorted(BUNDLED)
    assert all(f.built and f.size_bytes < 2 * 2**20 for f in fixtures)
    assert len({f.repo_id for f in fixtures}) == len(BUNDLED)
    assert not any(f.built for f in fixture_cache.build_all(tmp_path))
    repos, warnings = cached_fixtures(tmp_path)
    assert len(repos) == len(BUNDLED) and warnings == []


# -- the pytest fixture ----------------------------------------------------------------------------------
# Loaded through its pytest11 entry point once installed; named with -p until then (naming it both ways
# would register one module twice).
_FIXTURES_PLUGIN = () if any(ep.value == "recipe_checks.fixtures.pytest_fixtures" for ep in
                             importlib.metadata.entry_points(group="pytest11")) else ("-p", "recipe_checks.fixtures.pytest_fixtures")


def test_the_tiny_random_model_fixture_builds_into_the_configured_cache(pytester, tiny_fixture_cache, monkeypatch):
    pytester.makepyfile(test_user=f"""
        import os
        from pathlib import Path

        def test_user(tiny_random_model):
            fixture = tiny_random_model({SMALL!r})
            assert fixture.path.is_relative_to(Path(os.environ["EXPECTED_CACHE"]))
            assert type(fixture.load()).__name__ == "LlamaForCausalLM"

        def test_unknown(tiny_random_model):
            tiny_random_model("no-such-org/no-such-model")
    """)
    monkeypatch.setenv("EXPECTED_CACHE", str(tiny_fixture_cache))
    option = pytester.runpytest(*_FIXTURES_PLUGIN, "-p", "no:cacheprovider", f"--recipes-fixture-cache={tiny_fixture_cache}")
    option.assert_outcomes(passed=1, failed=1)
    option.stdout.fnmatch_lines(["*tiny_random_model('no-such-org/no-such-model'): model 'no-such-org/no-such-model'"
                                 " has no config.json here*", "help: *"])
    option.stdout.no_fnmatch_line("*During handling of the above exception*")  # one message, not a traceback
    pytester.makeini("[pytest]\nrecipe_checks_fixture_cache = hub-cache\n")  # relative to the ini file
    monkeypatch.setenv("EXPECTED_CACHE", str(pytester.path / "hub-cache"))
    ini = pytester.runpytest(*_FIXTURES_PLUGIN, "-p", "no:cacheprovider", "test_user.py::test_user")
    ini.assert_outcomes(passed=1)


def test_tiny_random_model_takes_a_hub_id_or_a_resolved_model(tiny_random_model, tiny_fixture_cache):
    by_id = tiny_random_model(SMALL)
    by_model = tiny_random_model(BUNDLED[SMALL])
    assert by_id.repo_id == by_model.repo_id and by_id.path.is_relative_to(tiny_fixture_cache)


# -- the command line ------------------------------------------------------------------------------------
def test_cli_fixtures_build_prints_one_line_per_fixture_then_finds_them(tmp_path, capsys):
    recipe = RECIPES / "smollm2-1.7b-full-rtx4090.yaml"
    assert main(["fixtures", "build", "--cache-dir", str(tmp_path), SMALL, str(recipe)]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines[:2]] == ["built", "built"]
    assert lines[0].startswith(f"{FIXTURE_NAMESPACE}/SmolLM2-135M-") and lines[0].endswith(SMALL)
    assert lines[1].endswith("HuggingFaceTB/SmolLM2-1.7B") and "KiB" in lines[1]
    assert lines[-1] == f"2 fixture(s) in {tmp_path}"
    assert main(["fixtures", "build", "--cache-dir", str(tmp_path), SMALL, str(recipe)]) == EXIT_OK
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()[:2]] == ["cached", "cached"]
    assert main(["fixtures", "list", "--cache-dir", str(tmp_path)]) == EXIT_OK
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 and all("(main)" in line for line in listed[:2])


def test_cli_fixtures_build_of_an_unknown_model_exits_2_and_builds_nothing(tmp_path, capsys):
    assert main(["fixtures", "build", "--cache-dir", str(tmp_path), SMALL, "no-such-org/no-such-model"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "model 'no-such-org/no-such-model' has no config.json here" in err and "help:" in err
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []
    assert main(["fixtures", "build", "--cache-dir", str(tmp_path)]) == EXIT_USAGE
    assert "--all" in capsys.readouterr().err
    broken = tmp_path.parent / "broken-recipe.yaml"
    broken.write_text("model: [unclosed\n")
    assert main(["fixtures", "build", "--cache-dir", str(tmp_path), str(broken)]) == EXIT_USAGE
    assert "not a valid recipe" in capsys.readouterr().err


def test_cli_fixtures_build_all_takes_every_bundled_model(tmp_path, capsys, monkeypatch):
    two = [BUNDLED[SMALL], BUNDLED["openai-community/gpt2"]]
    monkeypatch.setattr(fixture_cache, "bundled_models", lambda: two)  # every one is the slow test's job
    assert main(["fixtures", "build", "--all", "--cache-dir", str(tmp_path)]) == EXIT_OK
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()[:-1]] == [SMALL, "openai-community/gpt2"]


def test_cli_fixtures_list_of_an_empty_cache_says_so(tmp_path, capsys):
    assert main(["fixtures", "list", "--cache-dir", str(tmp_path / "none")]) == EXIT_OK
    assert capsys.readouterr().out == f"0 fixture(s) in {tmp_path / 'none'}\n"


def test_the_cli_and_the_fixture_plugin_import_no_heavy_library():
    code = ("import sys, recipe_checks.cli, recipe_checks.fixtures.pytest_fixtures; "
            "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))")
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "[]", child.stderr
    help_text = subprocess.run([sys.executable, "-m", "recipe_checks.cli", "fixtures", "build", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0 and "--cache-dir" in help_text.stdout


def test_cli_copies_of_a_cache_are_found_again(tmp_path, capsys):
    """A cache moved elsewhere (relative links) still holds valid fixtures."""
    assert main(["fixtures", "build", "--cache-dir", str(tmp_path / "a"), SMALL]) == EXIT_OK
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    capsys.readouterr()
    assert main(["fixtures", "build", "--cache-dir", str(tmp_path / "b"), SMALL]) == EXIT_OK
    assert capsys.readouterr().out.split()[2] == "cached"
