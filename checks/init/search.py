"""The search of `recipe-checks init`: candidate recipes in order of throughput, each traced with the
real estimator until one fits, with the memory estimate's monotonicity used to trace few of them.

Order. Candidates are ranked by (1) the FLOPs per token of checks.throughput (checkpointing adds one
forward pass, a third more work for LoRA and a quarter for a full fine-tune: the tokens/s ceiling
falls by as much), (2) LoRA before QLoRA at the same FLOPs (dequantizing the 4-bit weights in every
forward and backward costs time the ceiling does not count), (3) the larger micro-batch (bigger
matmuls use a GPU better; no figure is claimed for how much, so it only breaks ties), (4) the fewer
of the savers that cost no compute (a paged 8-bit optimizer changes the optimizer's numerics, a
chunked loss needs the liger-kernel package). The effective batch is the same for every candidate.

Search. The estimate is taken as monotone: more micro-batch never needs less memory, and each saver
never needs more (tests/test_memory_properties.py checks this for micro-batch, checkpointing and the
chunked loss, and QLoRA < LoRA on models whose weights dominate; an 8-bit optimizer stores fewer
bytes per parameter). So, per tier of (1, 2): the tier's strongest savers at micro-batch 1 (a tier
that fails there is dropped; when the first does, the strongest candidate of all is traced, and if
it does not fit nothing can), a binary search for the largest micro-batch those savers allow, and
at that micro-batch the cheaper saver sets in order. Were the assumption wrong somewhere, the search
could miss a better candidate, never write one that does not fit: what is written was traced.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from checks.gpus import GpuCatalog, GpuProfile
from checks.init.recipe_text import Plan, Spec, recipe_text

METHODS = ("lora", "qlora", "full")
DEFAULT_MAX_TRACES = 12


class InitError(Exception):
    """A request init cannot serve (unknown model, sequence too long, ...): exit 2 with the message."""


@dataclass
class Tried:
    plan: Plan
    peak_bytes: int | None  # None: the step could not be traced (error says why)
    fits: bool
    error: str | None = None


@dataclass
class Proposal:
    spec: Spec
    budget_bytes: int
    budget_source: str
    tried: list[Tried] = field(default_factory=list)
    chosen: Plan | None = None  # None: no candidate fits
    estimate: object | None = None  # the chosen candidate's Estimate
    out_of_traces: bool = False  # the trace bound stopped the search before it finished

    @property
    def text(self) -> str:
        assert self.chosen is not None
        return recipe_text(self.spec, self.chosen, header_lines(self))


def precision_for(gpu: GpuProfile, model_type: str) -> tuple[str, str]:
    """bf16 where the GPU has it; else fp16, unless fp16 is documented to give NaN for the family."""
    from checks.facts import precision_facts

    if gpu.supports_bf16:
        return "bfloat16", f"{gpu.key} (sm_{gpu.compute_capability.replace('.', '')}) has bf16 tensor cores"
    fact = (precision_facts().get("fp16_overflow") or {}).get(model_type) or {}
    if fact.get("severity") == "error":
        return "float32", f"{gpu.key} has no bf16 and {model_type} overflows in fp16 (RC406)"
    return "float16", f"{gpu.key} (sm_{gpu.compute_capability.replace('.', '')}) has no bf16 (RC401)"


def linear_targets(model) -> tuple[tuple[str, ...], bool]:
    """Leaf names of the modules peft's target_modules='all-linear' wraps, in model order, and whether
    they are transformers' Conv1D (weights stored transposed: fan_in_fan_out)."""
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    from checks.compat import include_all_linear_layers

    resolved = include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules
    names: dict[str, None] = {}
    conv1d = False
    for name, module in model.named_modules():
        if name in resolved:
            names.setdefault(name.rsplit(".", 1)[-1], None)
            conv1d = conv1d or isinstance(module, Conv1D)
    return tuple(names), conv1d


def micro_batches(batch: int, seq_len: int) -> list[int]:
    """The micro-batches that divide the effective batch and that a step is traced for."""
    from checks import limits

    return [m for m in range(1, batch + 1) if batch % m == 0 and m * seq_len <= limits.MAX_TRACE_TOKENS]


def tiers(spec: Spec, model, gpu: GpuProfile) -> list[tuple[bool, bool]]:
    """(quantized, checkpointing) pairs in order: FLOPs per token, then LoRA before QLoRA."""
    from checks.throughput import ceiling

    quantized = {"lora": (False, True), "qlora": (True,), "full": (False,)}[spec.method]

    def flops(checkpointing: bool) -> float:
        return ceiling(model, spec.seq_len, trains_weights=spec.method == "full", checkpointing=checkpointing,
                       gpu=gpu, precision=spec.precision).flops_per_token

    return sorted(itertools.product(quantized, (False, True)), key=lambda t: (flops(t[1]), t[0]))


def saver_sets(spec: Spec, quantized: bool) -> list[tuple[bool, bool]]:
    """(paged optimizer, chunked loss) in order of cost, cheapest first; the last is the strongest.
    QLoRA always takes the paged optimizer (RC301)."""
    from checks.memory.chunked_loss import supports_chunked_loss

    paged = (True,) if quantized else (False, True)
    chunked = (False, True) if supports_chunked_loss(spec.model_type) else (False,)
    return sorted(itertools.product(paged, chunked), key=lambda s: (s[1], s[0]))


class _Tracer:
    """Traces candidates as recipe files: written, loaded and validated as `recipe-checks check` would."""

    def __init__(self, spec: Spec, resolved, gpu: GpuProfile, catalog: GpuCatalog, proposal: Proposal,
                 max_traces: int) -> None:
        self.spec, self.resolved, self.gpu, self.catalog = spec, resolved, gpu, catalog
        self.proposal, self.max_traces = proposal, max_traces
        self.results: dict[Plan, Tried] = {}
        self.estimates: dict[Plan, object] = {}

    def fits(self, plan: Plan) -> bool:
        if plan not in self.results:
            if len(self.results) >= self.max_traces:
                self.proposal.out_of_traces = True
                raise _OutOfTraces
            self.results[plan] = self._trace(plan)
            self.proposal.tried.append(self.results[plan])
        return self.results[plan].fits

    def _trace(self, plan: Plan) -> Tried:
        from checks.memory.estimate import TraceError, estimate
        from checks.progress import tick

        tick(plan.describe(self.spec))
        state = candidate_state(self.spec, plan, self.catalog)
        try:
            result = estimate(state.recipe, self.resolved, self.gpu, with_fixes=False)
        except TraceError as exc:
            return Tried(plan, None, False, str(exc))
        self.estimates[plan] = result
        return Tried(plan, result.peak_bytes, result.fits)


class _OutOfTraces(Exception):
    pass


def candidate_state(spec: Spec, plan: Plan, catalog: GpuCatalog, text: str | None = None,
                    path: str = "<init candidate>"):
    """The RecipeState of a candidate's recipe text, loaded and validated as a recipe file is."""
    from checks.context import RecipeState
    from checks.options import Options
    from checks.recipe.load import load_text

    loaded = load_text(text or recipe_text(spec, plan), path)
    state = RecipeState(path=path, fs_path=Path(path), options=Options(gpus=(spec.gpu,)), catalog=catalog,
                        loaded=loaded)
    if state.validation is None or not state.validation.ok:  # a bug of init's: it wrote a key the schema refuses
        problems = [f"{'.'.join(map(str, v.key_path))}: {v.message}" for v in state.validation.invalid_values] + [
            f"unknown key {'.'.join(map(str, u.key_path))}" for u in state.validation.unknown_keys]
        raise InitError(f"init wrote a recipe the schema refuses ({'; '.join(problems)}); please report it")
    return state


def propose(spec: Spec, resolved, model, gpu: GpuProfile, catalog: GpuCatalog,
            max_traces: int = DEFAULT_MAX_TRACES) -> Proposal:
    """Trace candidates in order of throughput until the best that fits is known (module docstring)."""
    from checks.memory.estimate import budget_for

    budget, source = budget_for(candidate_state(spec, Plan(False, True, True, False, 1), catalog).recipe, gpu)
    proposal = Proposal(spec, budget, source)
    tracer = _Tracer(spec, resolved, gpu, catalog, proposal, max_traces)
    batches = micro_batches(spec.batch, spec.seq_len)
    order = tiers(spec, model, gpu)
    if not batches:
        raise InitError(f"a micro-batch of one {spec.seq_len}-token sequence is more than a step is traced for")

    def plan(tier: tuple[bool, bool], savers: tuple[bool, bool], micro_batch: int) -> Plan:
        return Plan(tier[0], tier[1], savers[0], savers[1], micro_batch)

    strongest_tier = max(order, key=lambda t: (t[1], t[0]))  # checkpointing and QLoRA: the least memory
    strongest = plan(strongest_tier, saver_sets(spec, strongest_tier[0])[-1], batches[0])
    try:
        for tier in order:
            savers = saver_sets(spec, tier[0])
            if not tracer.fits(plan(tier, savers[-1], batches[0])):
                if not tracer.fits(strongest):
                    return proposal  # the strongest candidate does not fit: no other can
                continue
            low, high = 0, len(batches) - 1  # batches[low] fits
            while low < high:
                mid = (low + high + 1) // 2
                if tracer.fits(plan(tier, savers[-1], batches[mid])):
                    low = mid
                else:
                    high = mid - 1
            proposal.chosen = next(p for p in (plan(tier, s, batches[low]) for s in savers) if tracer.fits(p))
            break
    except _OutOfTraces:
        proposal.chosen = best_traced(tracer, order, spec)
    if proposal.chosen is not None:
        proposal.estimate = tracer.estimates[proposal.chosen]
    return proposal


def best_traced(tracer: _Tracer, order: list[tuple[bool, bool]], spec: Spec) -> Plan | None:
    """When the trace bound stops the search: the best-ranked candidate traced so far that fits."""
    fitting = [t.plan for t in tracer.results.values() if t.fits]
    if not fitting:
        return None
    return min(fitting, key=lambda p: (order.index((p.quantized, p.checkpointing)), -p.micro_batch,
                                       saver_sets(spec, p.quantized).index((p.paged_optimizer, p.chunked_loss))))


def header_lines(proposal: Proposal) -> list[str]:
    """What the search tried, for the recipe's header and the command's output."""
    from checks.gpus import GIB

    spec = proposal.spec
    lines = [
        f"Budget: {proposal.budget_bytes / GIB:.2f} GiB ({proposal.budget_source}); effective batch {spec.batch}, "
        f"precision {spec.precision}.",
        "Candidates are ordered by FLOPs per token (checkpointing adds a forward), LoRA before QLoRA,",
        "larger micro-batch, fewer savers; each line below is a traced step (`recipe-checks estimate`):",
    ]
    for tried in proposal.tried:
        if tried.peak_bytes is None:
            verdict = f"not traced: {tried.error}"
        else:
            verdict = f"peak {tried.peak_bytes / GIB:6.2f} GiB  {'fits' if tried.fits else 'does not fit'}"
        mark = "->" if tried.plan == proposal.chosen else "  "
        lines.append(f" {mark} {tried.plan.describe(spec)}: {verdict}")
    if proposal.out_of_traces:
        lines.append(f"The search stopped at its bound of {len(proposal.tried)} traces (--max-traces).")
    lines.append("Candidates ranked above the chosen one and not listed need at least the memory of one")
    lines.append("listed that does not fit (the estimate is monotone in micro-batch and in each saver).")
    if proposal.chosen is not None and proposal.chosen.quantized and spec.method == "lora":
        lines.append("--method lora did not fit without QLoRA: the chosen candidate quantizes the base to 4 bits.")
    return lines


def build_spec(model_name: str, gpu: GpuProfile, method: str, seq_len: int | None, batch: int):
    """The Spec of a request, with the resolved config and meta model it was read from; InitError for
    a model that does not resolve offline or cannot be built, or a sequence longer than the model's."""
    from checks.models.resolve import ModelResolutionError, bundled_index, resolve_model_config
    from checks.models.skeleton import ModelBuildError, build_meta_model

    try:
        resolved = resolve_model_config(model_name, None)
    except ModelResolutionError as exc:
        raise InitError(f"{exc}; `recipe-checks models` lists the bundled ones ({exc.help})") from None
    entry = bundled_index().get(model_name.lower())
    try:
        model = build_meta_model(resolved, "CAUSAL_LM")
    except ModelBuildError as exc:
        raise InitError(f"{exc} ({exc.help})") from None
    text_config = resolved.config.get("text_config") or resolved.config
    longest = text_config.get("max_position_embeddings") or resolved.config.get("n_positions")
    if seq_len is None:
        seq_len = min(2048, longest or 2048)
    elif longest and seq_len > longest:
        raise InitError(f"--seq {seq_len} is longer than {resolved.name}'s {longest} positions "
                        f"(max_position_embeddings): give --seq {longest} or less")
    precision, why = precision_for(gpu, resolved.model_type)
    targets, conv1d = linear_targets(model) if method != "full" else ((), False)
    spec = Spec(model=entry.hub_id if entry else model_name, model_type=resolved.model_type, gpu=gpu.key,
                gpu_name=gpu.name, method=method, precision=precision, precision_why=why, targets=targets,
                fan_in_fan_out=conv1d, seq_len=seq_len, batch=batch,
                attn_implementation="sdpa" if getattr(type(model), "_supports_sdpa", False) else "eager")
    return spec, resolved, model


def verify(proposal: Proposal, catalog: GpuCatalog, path: str = "<init recipe>") -> list:
    """Every check but the real steps (static, and vram: the same trace, cached) on the text written."""
    from checks.engine import run_check
    from checks.rules import CHECKS, GPU_CHECKS, RUN_CHECKS

    spec = proposal.spec
    state = candidate_state(spec, proposal.chosen, catalog, text=proposal.text, path=path)
    return [run_check(state, check, spec.gpu if check in GPU_CHECKS else None) for check in CHECKS
            if check not in RUN_CHECKS]
