"""pytest collection nodes: one RecipeFile per recipe, one RecipeItem per recipe x check (x GPU).

Node ids read `recipes/x.yaml::target-modules`, or `recipes/x.yaml::precision[t4]` when the
recipe is checked against several GPUs in one run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest

from recipe_checks.compat import skip_at_item
from recipe_checks.context import RecipeState
from recipe_checks.engine import gpus_for, has_ignores, run_check, unused_ignores
from recipe_checks.findings import Finding
from recipe_checks.gpus import GIB, GpuCatalog
from recipe_checks.network import offline
from recipe_checks.options import Options
from recipe_checks.render import render_finding
from recipe_checks.rules import CHECKS, CUDA_CHECKS, GPU_CHECKS, IGNORES_CHECK, SLOW_CHECKS


class RecipeWarning(UserWarning):
    """A warning-level finding: shown in pytest's warnings summary, a failure with --recipes-strict."""


class RecipeVersionWarning(UserWarning):
    """An installed library outside the range recipe-checks is tested with."""


@dataclass
class RecipeSession:
    options: Options
    catalog: GpuCatalog
    # recipe display path -> the GPUs it declares, for recipes this run does not check
    not_for_this_gpu: dict[str, list[str]] = field(default_factory=dict)
    # node ids deselected as off target (kept for pytest-xdist's controller, which collects nothing)
    deselected: list[str] = field(default_factory=list)
    from_worker: bool = False  # the xdist controller took a worker's list already
    changes: Any = None  # recipe_checks.changed.Changes under --recipes-changed-since
    unchanged: list[str] = field(default_factory=list)  # recipes deselected as unchanged since the REF


class RecipeCheckFailed(Exception):
    def __init__(self, findings: list[Finding]) -> None:
        super().__init__(f"{len(findings)} finding(s)")
        self.findings = findings


class RecipeFile(pytest.File):
    def collect(self):
        session: RecipeSession = self.config.stash[SESSION_KEY]
        display = self.nodeid or str(self.path)
        self.state = RecipeState.from_file(self.path, display, session.options, session.catalog)
        gpus = gpus_for(self.state, session.options)
        off_target = not gpus
        if off_target:
            session.not_for_this_gpu[display] = self.state.declared_gpus()
            gpus = [None]
        several = len(gpus) > 1
        for check in CHECKS:
            for gpu in gpus if check in GPU_CHECKS else [None]:
                name = f"{check}[{gpu}]" if several and gpu is not None else check
                item = RecipeItem.from_parent(self, name=name, check=check, gpu=gpu)
                item.off_target = off_target
                if check in SLOW_CHECKS:
                    item.add_marker(pytest.mark.slow)
                if check in CUDA_CHECKS:
                    item.add_marker(pytest.mark.gpu)
                yield item
        if has_ignores(self.state):  # last: judged over every check of the recipe that ran before it
            item = RecipeItem.from_parent(self, name=IGNORES_CHECK, check=IGNORES_CHECK, gpu=None)
            item.off_target = off_target
            yield item


class RecipeItem(pytest.Item):
    def __init__(self, *, check: str, gpu: str | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.gpu = gpu
        self.off_target = False
        self._failed_line = 0
        self.result = None  # the CheckResult, for the CI annotations and job summary
        self.add_marker(pytest.mark.recipe_check)

    @property
    def state(self) -> RecipeState:
        return self.parent.state

    def setup(self) -> None:
        marker = self.get_closest_marker("gpu")  # the marker acts on recipe items only, never on the host's tests
        if marker is not None:
            skip_unless_cuda(marker.kwargs.get("min_memory_gib"))

    def runtest(self) -> None:
        with warnings.catch_warnings():
            # Deprecation noise from torch internals that transformers imports: nothing a recipe author can act on.
            warnings.filterwarnings("ignore", message="`torch.jit.script_method` is deprecated",
                                    category=DeprecationWarning)
            with offline(self.state.options.allow_network):  # the libraries offline for the check, not the host's tests
                if self.check == IGNORES_CHECK:
                    result = unused_ignores(self.state)
                else:
                    result = run_check(self.state, self.check, self.gpu)
        self.result = result
        if result.error is not None:
            raise result.error
        if result.skipped is not None:
            skip_at_item(result.skipped)
        strict = self.state.options.strict
        for info in result.infos:
            text = info.message
            self.user_properties.append((info.rule_id, text))
            self.add_report_section("call", "recipe-checks", f"{info.rule_id} (info) {text}")
        for suppressed in result.suppressed:
            self.user_properties.append((f"{suppressed.rule_id} (ignored)", suppressed.message))
        for waiting in result.waiting:
            self.add_report_section("call", "recipe-checks", f"not run: {waiting}")
        failing = result.errors + (result.warnings if strict else [])
        if not strict:
            for warning in result.warnings:
                warnings.warn_explicit(
                    RecipeWarning(f"{warning.rule_id} {warning.message} -- help: {warning.help}"),
                    RecipeWarning,
                    filename=str(self.path),
                    lineno=warning.location.line,
                )
        if failing:
            self._failed_line = failing[0].location.line
            raise RecipeCheckFailed(failing)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, RecipeCheckFailed):
            return "\n\n".join(
                render_finding(f, self.state.source_line(f.location.line)) for f in excinfo.value.findings
            )
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        line = self._failed_line - 1 if self._failed_line else 0
        return self.path, line, self.name


def skip_unless_cuda(min_memory_gib: float | None = None) -> None:
    """Skip, saying what is needed, unless a CUDA GPU (with enough memory) is present."""
    from recipe_checks.compat import installed_version

    version = installed_version("torch") or "(not installed)"
    needs = (f"needs a CUDA GPU: torch.cuda.is_available() is False here (torch {version}); run it on a machine "
             "with an NVIDIA GPU and a CUDA build of torch")
    if version.endswith("+cpu"):  # a CPU build has no CUDA: known without importing torch (seconds)
        skip_at_item(needs)
    import torch

    if not torch.cuda.is_available():
        skip_at_item(needs)
    if min_memory_gib is not None:
        total = torch.cuda.get_device_properties(0).total_memory / GIB
        if total < float(min_memory_gib):
            skip_at_item(f"needs a GPU with {min_memory_gib} GiB; this one has {total:.1f} GiB")


SESSION_KEY = pytest.StashKey[RecipeSession]()
