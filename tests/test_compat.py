"""checks/compat.py: a missing private symbol is a CompatError naming library, version and range, and an
installed version outside the tested range is a clear warning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recipe_checks import compat
from recipe_checks.memory.errors import TraceError

REPO = Path(__file__).resolve().parent.parent


def _versions(monkeypatch, **installed):
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version",
                        lambda name: installed.get(name, real(name)) if name != "recipe-checks" else "0.1.0")


def test_installed_versions_inside_the_range_give_no_warning(monkeypatch):
    _versions(monkeypatch, **{name: oldest for name, (oldest, _) in compat.SUPPORTED.items()})
    assert compat.version_warnings() == []
    _versions(monkeypatch, transformers="5.24.9", torch="2.13.0+cpu", bitsandbytes="0.50.2")
    assert compat.version_warnings() == []


def test_a_version_below_the_range_warns_with_the_range_and_the_fix(monkeypatch):
    _versions(monkeypatch, transformers="4.55.0")
    [warning] = compat.version_warnings()
    assert warning.startswith("transformers 4.55.0 is below the tested range 5.20-5.24 of recipe-checks 0.1.0: ")
    assert warning.endswith("install transformers>=5.20.0")


def test_a_version_above_the_range_warns_that_it_is_untested(monkeypatch):
    _versions(monkeypatch, bitsandbytes="0.51.0", peft="1.0.0")
    warnings = compat.version_warnings()
    assert [w.split(" is ")[0] for w in warnings] == ["peft 1.0.0", "bitsandbytes 0.51.0"]
    assert warnings[1].startswith("bitsandbytes 0.51.0 is above the tested range 0.50 of recipe-checks")


def test_an_absent_optional_library_is_not_a_warning(monkeypatch):
    real = compat.installed_version
    monkeypatch.setattr(compat, "installed_version", lambda name: None if name == "bitsandbytes" else real(name))
    assert not any("bitsandbytes" in w for w in compat.version_warnings())


def test_a_missing_symbol_is_a_compat_error_naming_library_version_and_range(monkeypatch):
    _versions(monkeypatch, transformers="4.57.1")
    with pytest.raises(compat.CompatError) as error:
        compat.require("transformers.masking_utils.no_such_function")
    assert str(error.value) == ("transformers 4.57.1 lacks transformers.masking_utils.no_such_function; "
                                "recipe-checks supports transformers 5.20-5.24")
    assert isinstance(error.value, TraceError)  # the vram check turns it into a finding
    with pytest.raises(compat.CompatError, match="peft .* lacks peft.no_such_module.thing"):
        compat.require("peft.no_such_module.thing")
    with pytest.raises(compat.CompatError, match="lacks bitsandbytes.torch.ops.bitsandbytes.int8_nothing"):
        compat.bitsandbytes_op("int8_nothing")


def test_every_symbol_the_engine_uses_exists_in_the_installed_libraries():
    import torch

    compat.fake_tensor_mode()
    compat.torch_dispatch_mode()
    compat.masking_utils()
    compat.int8_matmul_classes()
    compat.require("transformers.quantizers.base.get_keys_to_not_convert")
    compat.require("transformers.integrations.bitsandbytes.replace_with_bnb_linear")
    compat.require("peft.tuners.lora.model.LoraModel._create_new_module")
    compat.require("peft.tuners.tuners_utils._maybe_include_all_linear_layers")
    from recipe_checks.memory.kernels import check_ops

    check_ops()
    assert compat.tensor_slots(torch.nn.Linear(2, 2))[0].keys() == {"weight", "bias"}


def test_pyproject_declares_the_range_in_compat_and_constraints_pin_its_newest_end():
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = dict(line.split("==") for line in (REPO / "ci" / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name, (oldest, newest) in compat.SUPPORTED.items():
        floor = re.search(rf'"{name}>=([\d.]+),<([\d.]+)"', pyproject)
        assert floor, f"pyproject.toml declares no range for {name}"
        assert compat._release(floor.group(1)) == compat._release(oldest)[: len(compat._release(floor.group(1)))]
        assert pins[name].startswith(newest + "."), f"ci/constraints.txt pins {name} {pins[name]}, not {newest}.x"
