"""quiet() hides listed noise only; a warning that a result may be silently incorrect is never hidden, and a
real step fails on it (tests/test_cpu_features.py runs one through pytester)."""

from __future__ import annotations

import logging
import warnings

import pytest

from recipe_checks.library_warnings import NOISE, SilentlyIncorrect, failing_on_silently_incorrect, quiet
from recipe_checks.run.setup import SetupRefused, trusted

TORCH_UNREGISTERED = ("bitsandbytes::gemv_4bit: an autograd kernel was not registered to the Autograd key(s) but we "
                      "are trying to backprop through it. This may lead to silently incorrect behavior.")


def _shown(block) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        block()
    return [str(w.message) for w in caught]


def test_quiet_hides_the_listed_noise_and_passes_every_other_warning_on():
    def block():
        with quiet():
            warnings.warn("Paged optimizers are not supported on CPU. Falling back to non-paged optimizer behavior.")
            warnings.warn("`gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("something a library has not said before")
            print("advice for a real run")

    assert _shown(block) == ["something a library has not said before"]


def test_every_noise_entry_says_why_and_none_is_about_correctness():
    for category, pattern, why in NOISE:
        assert issubclass(category, Warning) and pattern and len(why) > 20
        assert "incorrect" not in pattern and "wrong" not in pattern


def test_quiet_never_hides_a_warning_that_a_result_may_be_silently_incorrect():
    def block():
        with quiet():
            warnings.warn(TORCH_UNREGISTERED)

    assert _shown(block) == [TORCH_UNREGISTERED]


def test_a_library_log_record_saying_silently_incorrect_becomes_a_warning_and_the_rest_is_dropped(caplog):
    def block():
        with quiet():
            logging.getLogger("bitsandbytes.nn.modules").warning("This will lead to slow inference.")
            logging.getLogger("transformers.modeling_utils").warning("results may be silently incorrect on CPU")

    assert _shown(block) == ["transformers.modeling_utils: results may be silently incorrect on CPU"]
    assert "slow inference" not in caplog.text


def test_failing_on_silently_incorrect_raises_with_the_librarys_message_and_passes_the_rest_on():
    shown = []

    def block():
        with pytest.raises(SilentlyIncorrect, match="UserWarning: bitsandbytes::gemv_4bit: an autograd kernel"):
            with failing_on_silently_incorrect():
                warnings.warn("an unrelated deprecation", DeprecationWarning)
                warnings.warn(TORCH_UNREGISTERED)
                warnings.warn(TORCH_UNREGISTERED)  # said once in the finding
        shown.append(True)

    assert _shown(block) == ["an unrelated deprecation"] and shown


def test_trusted_refuses_the_stage_carrying_the_warning():
    @trusted("the step")
    def step():
        with quiet():  # inside quiet too: quiet passes it on
            warnings.warn(TORCH_UNREGISTERED)

    with pytest.raises(SetupRefused) as refused:
        step()
    assert refused.value.stage == "the step" and refused.value.key_path == ()
    assert isinstance(refused.value.library_error, SilentlyIncorrect)
    assert refused.value.library_error.messages == [f"UserWarning: {TORCH_UNREGISTERED}"]
