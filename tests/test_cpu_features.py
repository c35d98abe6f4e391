"""The real steps give the same verdict on every CPU: each branch bitsandbytes takes by the CPU's features is
forced here, whatever CPU runs the suite.

bitsandbytes 0.50 asks its native library whether the CPU has AVX512-BF16 (`has_avx512bf16`). Where it does,
a Linear4bit repacks its weight into a CPU inference layout at its first eval forward under no_grad, and the
CPU backend registers a `gemv_4bit` kernel for that layout with no autograd kernel. `avx512bf16` below sets
up both halves on any CPU: the detection the layer reads, and a stand-in `gemv_4bit` CPU kernel that
computes what the native one does (from the repacked layout), like it without autograd.
"""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import RECIPES, REPO

from recipe_checks.engine import run_check
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options

BRANCHES = ["avx512bf16", "no-avx512bf16"]


def _repacked_gemv_4bit(A, B, shapeB, absmax, code, blocksize):
    """bitsandbytes' CPU `gemv_4bit` on the layout `_convert_weight_packed_for_cpu` makes: weight codes
    [N, K/2] in blocks of 32 rows, absmax [K / blocksize, N] in bf16; computed in bf16, as the native kernel
    does, from the input's values only (the native kernel reads memory: autograd sees nothing of it)."""
    n, k = shapeB
    A = A.detach()
    packed = B.contiguous().view(torch.uint8).reshape(-1, 32)
    codes = torch.cat([packed & 0xF, packed >> 4], dim=-1)  # the 32 low nibbles, then the 32 high ones
    codes = codes.reshape(n // 32, k // 2, 32, 2).transpose(1, 2).reshape(n, k)
    weight = code.float()[codes.long()] * absmax.float().T.repeat_interleave(blocksize, dim=1)
    flat = A.reshape(-1, k).to(torch.bfloat16).float()
    return (flat @ weight.T).to(torch.bfloat16).reshape(*A.shape[:-1], n)


@pytest.fixture(params=BRANCHES)
def cpu_branch(request, monkeypatch):
    """Each CPU branch of bitsandbytes, forced: the detection Linear4bit reads at construction, and for
    AVX512-BF16 the CPU backend's gemv_4bit kernel (registered without autograd, as bitsandbytes does)."""
    import bitsandbytes.nn.modules

    has = request.param == "avx512bf16"
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: has)
    if not has:
        yield request.param
        return
    library = torch.library.Library("bitsandbytes", "IMPL")
    library.impl("gemv_4bit", _repacked_gemv_4bit, "CPU")
    try:
        yield request.param
    finally:
        library._destroy()


def _linear4bit():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
    layer.weight = weight._quantize("cpu")
    return layer


def _input_gradient_after_an_eval_forward(layer):
    layer.eval()
    with torch.no_grad():
        inference = layer(torch.ones(2, 64))
    layer.train()
    x = torch.ones(2, 64, requires_grad=True)
    training = layer(x)
    training.float().sum().backward()
    return inference, training, x.grad


def test_the_forced_avx512bf16_branch_is_bitsandbytes_repack_and_cuts_the_gradient(cpu_branch):
    """The stand-in is faithful: forced, the layer repacks at an eval forward, computes the same output from
    the repacked layout, and its training forward no longer passes a gradient; unforced, nothing repacks."""
    layer = _linear4bit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inference, training, grad = _input_gradient_after_an_eval_forward(layer)
    unregistered = [w for w in caught if "autograd kernel was not registered" in str(w.message)]
    assert bool(unregistered) is (cpu_branch == "avx512bf16")
    repacked = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert repacked is (cpu_branch == "avx512bf16")
    assert torch.allclose(inference.float(), training.detach().float(), rtol=2e-2, atol=2e-2)
    assert (grad is None) is (cpu_branch == "avx512bf16")


def test_keep_4bit_training_layout_keeps_the_gpu_layout_and_the_gradient_on_each_branch(cpu_branch):
    from recipe_checks import compat

    layer = _linear4bit()
    assert compat.keep_4bit_training_layout(torch.nn.Sequential(layer)) == 1
    _, _, grad = _input_gradient_after_an_eval_forward(layer)
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    assert grad is not None and grad.abs().sum() > 0


def test_a_bitsandbytes_without_the_switch_is_a_compat_error(monkeypatch):
    from recipe_checks import compat

    layer = _linear4bit()
    del layer.support_avx512bf16_for_cpu
    with pytest.raises(compat.CompatError, match="Linear4bit.support_avx512bf16_for_cpu"):
        compat.keep_4bit_training_layout(torch.nn.Sequential(layer))


# -- the real steps of a QLoRA recipe on each branch -----------------------------------------------------
def _state(path: Path):
    from recipe_checks.context import RecipeState

    return RecipeState.from_file(path, path.name, Options(), GpuCatalog.load(()))


def _errors(result) -> list[str]:
    return [f"{f.rule_id} {f.message}" for f in result.errors]


QLORA_DPO = """\
    model: {id: Qwen/Qwen2.5-0.5B, torch_dtype: bfloat16}
    quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: bfloat16}
    lora: {r: 8, lora_alpha: 16, target_modules: all-linear}
    training: {per_device_train_batch_size: 2, learning_rate: 5.0e-5, bf16: true, optim: paged_adamw_8bit}
    dpo: {beta: 0.1, max_length: 256}
    hardware: {gpu: rtx4090}
    """


@pytest.mark.parametrize("check", ["cpu-step", "cpu-train"])
def test_a_qlora_recipe_passes_the_real_steps_on_each_cpu_branch(cpu_branch, check):
    """The shipped QLoRA recipe RC704 failed on AVX512-BF16 CPUs (q/k/v and gate/up got no gradient)."""
    result = run_check(_state(RECIPES / "llama3-8b-qlora-rtx4090.yaml"), check)
    assert result.error is None and result.skipped is None, (result.error, result.skipped)
    assert _errors(result) == []


@pytest.mark.parametrize("check", ["cpu-step", "cpu-train"])
def test_a_qlora_dpo_recipe_passes_the_real_steps_on_each_cpu_branch(cpu_branch, check, tmp_path):
    path = tmp_path / "qlora-dpo.yaml"
    path.write_text(textwrap.dedent(QLORA_DPO), encoding="utf-8")
    result = run_check(_state(path), check)
    assert result.error is None and result.skipped is None, (result.error, result.skipped)
    assert _errors(result) == []


# -- a warning that a result may be silently incorrect fails the step ------------------------------------
def test_a_step_torch_warns_may_be_silently_incorrect_fails_rc701_with_that_message(pytester, monkeypatch):
    """The forced AVX512-BF16 branch without the fix: bitsandbytes' gemv_4bit has no autograd kernel, torch
    warns during the backward, and the step is refused with torch's message instead of judged (RC704)."""
    import bitsandbytes.nn.modules

    from recipe_checks import compat

    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(compat, "keep_4bit_training_layout", lambda model: 0)
    library = torch.library.Library("bitsandbytes", "IMPL")
    library.impl("gemv_4bit", _repacked_gemv_4bit, "CPU")
    try:
        pytester.makefile(".yaml", qlora=(RECIPES / "llama3-8b-qlora-rtx4090.yaml").read_text(encoding="utf-8"))
        result = pytester.runpytest("qlora.yaml", "-k", "cpu-step", "-p", "no:cacheprovider", "--recipes-no-cache")
    finally:
        library._destroy()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*RC701 the step cannot be judged: a library warned that its result may be silently incorrect: "
        "UserWarning: bitsandbytes::gemv_4bit: an autograd kernel was not registered*",
        "*help: this is no setting of the recipe*",
    ])
    result.stdout.no_fnmatch_line("*RC704*")


# -- nothing left behind ----------------------------------------------------------------------------------
# one recipe of each kind of real step: a causal LM (Trainer), a DPO (TRL's DPOTrainer), a FLUX QLoRA (diffusers)
LEAVES_NOTHING = ["llama3-8b-qlora-rtx4090.yaml", "llama3-8b-lora-dpo-rtx4090.yaml", "flux1-dev-qlora-rtx4090.yaml"]


@pytest.mark.slow
def test_the_main_job_and_the_commands_leave_nothing_in_the_temp_dir_and_open_no_socket(tmp_path):
    """Each command in a process of its own with a temp dir of its own (the fixtures and the result cache
    elsewhere, as a user has them) and every socket refused and recorded (tests/no_network.py), outside CI
    and with no offline variable set, where TRL's trainers send telemetry: afterwards the temp dir is as
    empty as it was, and no command tried to resolve a name or connect."""
    import os
    import subprocess
    import sys

    from recipe_checks.network import OFFLINE_ENVIRONMENT

    temp = tmp_path / "tmp"
    temp.mkdir()
    log = tmp_path / "sockets.log"
    # one result cache for all (outside the temp dir): check traces, the main job reuses the traces and runs
    # the real steps, so each command does work of its own
    env = {**os.environ, "TMPDIR": str(temp), "RECIPE_CHECKS_CACHE_DIR": str(tmp_path / "cache")}
    for name in ("RECIPE_CHECKS_NO_CACHE", "CI", *OFFLINE_ENVIRONMENT):
        env.pop(name, None)
    recipes = [str(RECIPES / name) for name in LEAVES_NOTHING]
    guarded = [sys.executable, "-m", "tests.no_network", str(log)]
    check = [*guarded, "cli", "check", "--with-vram", *recipes]
    main_job = [*guarded, "pytest", "--gpu=rtx4090", *recipes, "-v", "-p", "no:cacheprovider"]
    estimate = [*guarded, "cli", "estimate", recipes[1], "--gpu", "rtx4090"]
    init = [*guarded, "cli", "init", "HuggingFaceTB/SmolLM2-135M", "--gpu", "rtx4060", "--seq", "128",
            "--batch", "2", "--output", str(tmp_path / "init.yaml")]
    for command in (check, main_job, estimate, init):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert sorted(p.name for p in temp.iterdir()) == [], command
        assert not log.exists(), log.read_text(encoding="utf-8")[:5000]
        if command is main_job:  # the real steps ran: they are what made the directories and sent telemetry
            assert done.stdout.count("::cpu-step PASSED") == 3 and done.stdout.count("::cpu-train PASSED") == 2


# -- bitsandbytes' hub kernel ---------------------------------------------------------------------------
_IMPORT_BITSANDBYTES = """\
import importlib.machinery, sys

if sys.argv[1] == "guarded":
    from recipe_checks.compat import bitsandbytes_without_hub_kernel

    bitsandbytes_without_hub_kernel()


class ForceAvx512Bf16:  # bitsandbytes.functional.has_avx512bf16 answers True, as on such a CPU
    def find_spec(self, fullname, path, target=None):
        if fullname != "bitsandbytes.functional":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        real = spec.loader

        class Loader:
            def create_module(self, spec):
                return real.create_module(spec)

            def exec_module(self, module):
                real.exec_module(module)
                module.has_avx512bf16 = lambda: True

        spec.loader = Loader()
        return spec


sys.meta_path.insert(0, ForceAvx512Bf16())
import bitsandbytes  # noqa: E402
import kernels  # noqa: E402  importable again once bitsandbytes' CPU backend is loaded

print("imported", bitsandbytes.__version__, kernels.__name__)
"""

_STAND_IN_KERNELS = """\
import os


def get_kernel(repo_id, version=None):
    with open(os.environ["HUB_KERNEL_ASKED"], "w") as marker:
        marker.write(repo_id)
    raise RuntimeError("a stand-in: the real one downloads the kernel from the hub")
"""


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "unguarded"])
def test_importing_bitsandbytes_on_an_avx512bf16_cpu_never_asks_the_hub_for_a_kernel(tmp_path, guarded):
    """With the `kernels` package installed, bitsandbytes 0.50's import on such a CPU calls get_kernel on a hub
    repository (a download, then native code loaded). Unguarded, the stand-in shows the call happens."""
    import os
    import subprocess
    import sys

    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text(_STAND_IN_KERNELS, encoding="utf-8")
    asked = tmp_path / "asked"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])]),
           "HUB_KERNEL_ASKED": str(asked)}
    done = subprocess.run([sys.executable, "-c", _IMPORT_BITSANDBYTES, "guarded" if guarded else "unguarded"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]
    if guarded:
        assert not asked.exists()
        assert "kernels-community" not in done.stderr  # nor bitsandbytes' notice telling to install it
    else:
        assert asked.read_text(encoding="utf-8") == "kernels-community/quantization-bitsandbytes"


# -- torch's CPU kernels: the ISA ATen dispatches to, and oneDNN ------------------------------------------
_CPU_STEP_VERDICTS = """\
import sys
from pathlib import Path

import torch

from recipe_checks.context import RecipeState
from recipe_checks.engine import run_check
from recipe_checks.gpus import GpuCatalog
from recipe_checks.options import Options

with torch.backends.mkldnn.flags(enabled=sys.argv[1] != "no-onednn"):
    for name in sys.argv[2:]:
        path = Path(name)
        result = run_check(RecipeState.from_file(path, path.name, Options(), GpuCatalog.load(())), "cpu-step")
        print(path.name, result.skipped, result.error, sorted(f.rule_id for f in result.errors))
print("capability", torch.backends.cpu.get_cpu_capability())
"""

# the bf16 LoRA and the fp16 QLoRA recipes: bf16 and fp16 matmuls are where ATen's and oneDNN's CPU paths differ
ISA_RECIPES = ["llama3-8b-lora-bf16-rtx4090.yaml", "mistral-7b-qlora-t4-fp16.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["aten-default", "aten-avx2", "no-onednn"])
def test_cpu_step_verdicts_do_not_depend_on_the_kernels_torch_picks_for_this_cpu(path):
    """ATEN_CPU_CAPABILITY forces the vectorised kernels ATen runs (none, AVX2; this machine's own are the
    other tests'); oneDNN, which serves bf16 matmuls on CPUs that have AVX512-BF16 or AMX, is switched off."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if path.startswith("aten-"):
        env["ATEN_CPU_CAPABILITY"] = path.removeprefix("aten-")
    done = subprocess.run([sys.executable, "-c", _CPU_STEP_VERDICTS, path, *(str(RECIPES / n) for n in ISA_RECIPES)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.endswith(".yaml None None []") or line.startswith("capability")] == lines
    assert len(lines) == len(ISA_RECIPES) + 1
    if path.startswith("aten-"):
        assert lines[-1] == f"capability {path.removeprefix('aten-').upper()}"
