"""GPU profiles: the shipped data validates, names are forgiving, unknown names suggest the nearest."""

from __future__ import annotations

import pytest

from checks.gpus import GpuCatalog, GpuProfileError, UnknownGpuError

REQUIRED = ["rtx4060", "rtx4070", "rtx4080", "rtx4090", "rtx5090", "rtx3090", "t4", "v100-16gb", "a10g", "l4",
            "l40s", "a6000", "a100-40gb", "a100-80gb", "h100", "h200"]


@pytest.fixture(scope="module")
def catalog() -> GpuCatalog:
    return GpuCatalog.load()


def test_every_required_gpu_is_shipped_with_a_source(catalog):
    for name in REQUIRED:
        profile = catalog.get(name)
        assert profile.sources and all(s.startswith("http") for s in profile.sources)


@pytest.mark.parametrize("spelling", ["RTX 4090", "rtx-4090", "rtx_4090", "Rtx4090", "GeForce RTX 4090"])
def test_names_are_forgiving(catalog, spelling):
    assert catalog.get(spelling).key == "rtx4090"


def test_unknown_name_lists_known_names_and_the_nearest(catalog):
    with pytest.raises(UnknownGpuError) as info:
        catalog.get("rtx4099")
    assert info.value.suggestions[0] == "rtx4090"
    assert "Known: a100-40gb" in str(info.value)


def test_bf16_and_fp8_follow_compute_capability(catalog):
    for profile in catalog:
        assert profile.supports_bf16 == (profile.cc >= (8, 0)), profile.key
        assert profile.supports_fp8 == (profile.cc >= (8, 9)), profile.key


def test_memory_is_what_the_card_reports(catalog):
    assert 7.5 < catalog.get("rtx4060").memory_bytes / 2**30 <= 8
    assert 139 < catalog.get("h200").memory_bytes / 2**30 < 141


def test_user_profiles_extend_the_catalog(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        "mi300x:\n  name: AMD Instinct MI300X\n  vendor: amd\n  architecture: cdna3\n  compute_capability: '9.4'\n"
        "  memory_gb: 192\n  bf16: true\n  fp8: true\n  sources: [https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html]\n"
    )
    assert GpuCatalog.load((str(extra),)).get("MI300X").vendor == "amd"


def test_an_invalid_profile_file_is_a_clear_error(tmp_path):
    extra = tmp_path / "bad.yaml"
    extra.write_text("mygpu:\n  name: x\n")
    with pytest.raises(GpuProfileError, match="GPU profile 'mygpu' is invalid"):
        GpuCatalog.load((str(extra),))
