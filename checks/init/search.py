"""The search of `recipe-checks init`: candidate recipes in order of throughput, each traced with the
real estimator until one fits, with the memory estimate's monotonicity used to trace few of them.

Order. Candidates are ranked by (1) the FLOPs per token of recipe_checks.throughput (checkpointing adds one
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

Several GPUs (--gpus N > 1). Within each tier, the strategies in order of throughput: DDP (each rank the
whole model, only the gradients communicated), FSDP2 with resharding after forward (each rank a shard,
every block all-gathered in its forward and backward) for an unquantized base, and, for a full
fine-tune, ZeRO-3 with the optimizer offloaded to the CPU (the states cross PCIe and step on the host).
QLoRA is DDP only: the trace does not shard bitsandbytes' 4-bit layers. A DDP candidate whose
unquantized weights alone exceed the budget is not traced (each rank would hold all of them). Sharded
candidates take no paged 8-bit optimizer: their states are sharded instead, and DeepSpeed's offload
runs its own CPU Adam. When a tier's first candidate fails, the strongest candidate of each strategy
is traced before going on; if none fits, nothing can.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from recipe_checks.gpus import GpuCatalog, GpuProfile
from recipe_checks.init.recipe_text import (
    SHARDED,
    STRATEGY_LABELS,
    Plan,
    Spec,
    recipe_text,
    weights_bytes,
    weights_dtype,
)

METHODS = ("lora", "qlora", "full")
DEFAULT_MAX_TRACES = 12
MAX_GPUS = 1024


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
    not_traced: list[str] = field(default_factory=list)  # strategies ruled out without a trace, and why

    @property
    def text(self) -> str:
        assert self.chosen is not None
        return recipe_text(self.spec, self.chosen, header_lines(self))


def precision_for(gpu: GpuProfile, model_type: str) -> tuple[str, str]:
    """bf16 where the GPU has it; else fp16, unless fp16 is documented to give NaN for the family."""
    from recipe_checks.facts import precision_facts

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

    from recipe_checks.compat import include_all_linear_layers

    resolved = include_all_linear_layers(LoraConfig(target_modules="all-linear"), model).target_modules
    names: dict[str, None] = {}
    conv1d = False
    for name, module in model.named_modules():
        if name in resolved:
            names.setdefault(name.rsplit(".", 1)[-1], None)
            conv1d = conv1d or isinstance(module, Conv1D)
    return tuple(names), conv1d


def micro_batches(batch: int, seq_len: int, gpus: int = 1) -> list[int]:
    """The micro-batches that divide each GPU's share of the effective batch and that a step is traced for."""
    from recipe_checks import limits

    share = batch // gpus
    return [m for m in range(1, share + 1) if share % m == 0 and m * seq_len <= limits.MAX_TRACE_TOKENS]


def strategies(spec: Spec, quantized: bool) -> tuple[str | None, ...]:
    """The shardings tried for a tier, in order of throughput (module docstring); (None,) on one GPU."""
    if spec.gpus == 1:
        return (None,)
    if quantized:
        return ("ddp",)
    return ("ddp", "fsdp", "zero3") if spec.method == "full" else ("ddp", "fsdp")


def tiers(spec: Spec, model, gpu: GpuProfile) -> list[tuple[bool, bool]]:
    """(quantized, checkpointing) pairs in order: FLOPs per token, then LoRA before QLoRA."""
    from recipe_checks.throughput import ceiling

    quantized = {"lora": (False, True), "qlora": (True,), "full": (False,)}[spec.method]

    def flops(checkpointing: bool) -> float:
        return ceiling(model, spec.seq_len, trains_weights=spec.method == "full", checkpointing=checkpointing,
                       gpu=gpu, precision=spec.precision).flops_per_token

    return sorted(itertools.product(quantized, (False, True)), key=lambda t: (flops(t[1]), t[0]))


def saver_sets(spec: Spec, quantized: bool, strategy: str | None = None) -> list[tuple[bool, bool]]:
    """(paged optimizer, chunked loss) in order of cost, cheapest first; the last is the strongest.
    QLoRA always takes the paged optimizer (RC301); a sharded strategy never does (module docstring)."""
    from recipe_checks.memory.chunked_loss import supports_chunked_loss

    paged = (True,) if quantized else (False,) if strategy in SHARDED else (False, True)
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
        from recipe_checks.memory.estimate import TraceError, estimate
        from recipe_checks.progress import tick

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
    from recipe_checks.context import RecipeState
    from recipe_checks.options import Options
    from recipe_checks.recipe.load import load_text

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
    from recipe_checks.gpus import GIB
    from recipe_checks.memory.estimate import budget_for

    budget, source = budget_for(candidate_state(spec, Plan(False, True, True, False, 1), catalog).recipe, gpu)
    proposal = Proposal(spec, budget, source)
    tracer = _Tracer(spec, resolved, gpu, catalog, proposal, max_traces)
    batches = micro_batches(spec.batch, spec.seq_len, spec.gpus)
    order = cells(spec, model, gpu)
    if not batches:
        raise InitError(f"a micro-batch of one {spec.seq_len}-token sequence is more than a step is traced for")

    def plan(cell: tuple[bool, bool, str | None], savers: tuple[bool, bool], micro_batch: int) -> Plan:
        return Plan(cell[0], cell[1], savers[0], savers[1], micro_batch, cell[2])

    # a DDP rank holds every weight: where the unquantized ones alone exceed the budget, no trace need say so
    method = "full" if spec.method == "full" else "lora"
    dropped = [c for c in order if c[2] == "ddp" and not c[0] and weights_bytes(spec, method) > budget]
    if dropped:
        without = " without QLoRA" if spec.method == "lora" else ""
        shown = f"{weights_dtype(spec, method)} weights ({weights_bytes(spec, method) / GIB:.1f} GiB)"
        proposal.not_traced += [f"DDP{without} is not traced: the {shown}",
                                "alone exceed the budget, and each DDP rank holds all of them."]
    order = [c for c in order if c not in dropped]
    # the candidate needing the least memory of each strategy: when none of them fits, nothing can
    strongest = []
    for strategy in sorted({c[2] for c in order}, key=lambda s: -_STRATEGY_RANK[s]):
        cell = max((c for c in order if c[2] == strategy), key=lambda c: (c[1], c[0]))
        strongest.append(plan(cell, saver_sets(spec, cell[0], strategy)[-1], batches[0]))
    try:
        for cell in order:
            savers = saver_sets(spec, cell[0], cell[2])
            if not tracer.fits(plan(cell, savers[-1], batches[0])):
                if not any(tracer.fits(p) for p in strongest):
                    return proposal  # no strategy's strongest candidate fits: no other can
                continue
            low, high = 0, len(batches) - 1  # batches[low] fits
            while low < high:
                mid = (low + high + 1) // 2
                if tracer.fits(plan(cell, savers[-1], batches[mid])):
                    low = mid
                else:
                    high = mid - 1
            proposal.chosen = next(p for p in (plan(cell, s, batches[low]) for s in savers) if tracer.fits(p))
            break
    except _OutOfTraces:
        proposal.chosen = best_traced(tracer, order, spec)
    if proposal.chosen is not None:
        proposal.estimate = tracer.estimates[proposal.chosen]
    return proposal


_STRATEGY_RANK = {None: 0, "ddp": 0, "fsdp": 1, "zero3": 2}  # the more sharded, the less memory a rank needs


def cells(spec: Spec, model, gpu: GpuProfile) -> list[tuple[bool, bool, str | None]]:
    """(quantized, checkpointing, strategy) in order: the tiers, and within each its strategies."""
    return [(q, c, s) for q, c in tiers(spec, model, gpu) for s in strategies(spec, q)]


def best_traced(tracer: _Tracer, order: list[tuple[bool, bool, str | None]], spec: Spec) -> Plan | None:
    """When the trace bound stops the search: the best-ranked candidate traced so far that fits."""
    fitting = [t.plan for t in tracer.results.values() if t.fits]
    if not fitting:
        return None
    return min(fitting, key=lambda p: (order.index((p.quantized, p.checkpointing, p.strategy)), -p.micro_batch,
                                       saver_sets(spec, p.quantized, p.strategy).index(
                                           (p.paged_optimizer, p.chunked_loss))))


def header_lines(proposal: Proposal) -> list[str]:
    """What the search tried, for the recipe's header and the command's output."""
    from recipe_checks.gpus import GIB

    spec = proposal.spec
    lines = [
        (f"Budget: {proposal.budget_bytes / GIB:.2f} GiB ({proposal.budget_source}); effective batch {spec.batch}, "
         f"precision {spec.precision}."),
        "Candidates are ordered by FLOPs per token (checkpointing adds a forward), LoRA before QLoRA,",
        *(["then DDP, FSDP2, ZeRO-3 with CPU offload (the less communication, the faster),"] if spec.gpus > 1 else []),
        "larger micro-batch, fewer savers; each line below is a traced step (`recipe-checks estimate`):",
    ]
    if spec.gpus > 1:
        lines[-1] = lines[-1][:-1] + f", rank 0 of {spec.gpus}:"
    lines += proposal.not_traced
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
    if proposal.chosen is not None and proposal.chosen.strategy is not None:
        lines += strategy_reason(proposal)
    return lines


def strategy_reason(proposal: Proposal) -> list[str]:
    """Why the chosen candidate runs with its strategy: what the faster ones before it needed."""
    from recipe_checks.gpus import GIB

    spec, chosen = proposal.spec, proposal.chosen
    n, label = spec.gpus, STRATEGY_LABELS[chosen.strategy]
    method = "full" if spec.method == "full" else "lora"
    weights = weights_bytes(spec, method)

    def failed(strategy: str) -> Tried | None:
        """The traced candidate of `strategy` in the chosen one's tier that came closest to fitting."""
        same = [t for t in proposal.tried if t.plan.strategy == strategy and not t.fits and t.peak_bytes
                and (t.plan.quantized, t.plan.checkpointing) == (chosen.quantized, chosen.checkpointing)]
        return min(same, key=lambda t: t.peak_bytes, default=None)

    if chosen.strategy == "ddp":
        return [f"Strategy: DDP over {n}: the whole model's step fits one GPU (with DDP's gradient buckets), so",
                "each rank holds all of it and only the gradients are all-reduced: the least communication."]
    if chosen.strategy == "fsdp":
        ddp = failed("ddp")
        if ddp is None:
            why = (f"the {weights_dtype(spec, method)} weights ({weights / GIB:.1f} GiB) fit no single {spec.gpu} "
                   f"({proposal.budget_bytes / GIB:.2f} GiB budget)")
        else:
            why = f"DDP, each rank the whole model, does not fit (rank 0 peak {ddp.peak_bytes / GIB:.2f} GiB)"
        share = f"{weights / n / GIB:.1f} GiB"
        return [f"Strategy: {why}:",
                (f"{label} over {n} keeps {share} of the weights per rank, with a shard of the gradients and "
                "optimizer states;"),
                "each block's parameters are all-gathered for its forward and again for its backward."]
    fsdp = failed("fsdp")
    why = f"FSDP2 does not fit (rank 0 peak {fsdp.peak_bytes / GIB:.2f} GiB)" if fsdp else "FSDP2 was not traced here"
    timeline = getattr(getattr(proposal.estimate, "trace", None), "timeline", None)
    host = getattr(timeline, "host_bytes", 0)  # what the offload keeps in host memory, rank 0's share
    held = f"{host / GIB:.1f} GiB a rank, {host * n / GIB:.1f} GiB in all"
    return [f"Strategy: {why}: ZeRO-3 over {n} shards the weights too, and its",
            "optimizer offload keeps each rank's shard of the fp32 master weights, gradients and Adam states",
            f"in host memory: {held} (give hardware.host_memory_gib, the RAM of one node,",
            "and RC805 checks that it holds its ranks' share)."]


def build_spec(model_name: str, gpu: GpuProfile, method: str, seq_len: int | None, batch: int | None,
               gpus: int = 1):
    """The Spec of a request, with the resolved config and meta model it was read from; InitError for
    a model that does not resolve offline or cannot be built, a sequence longer than the model's, or a
    batch the GPUs cannot share equally. `batch` None: 16, rounded up to a multiple of the GPUs."""
    from recipe_checks.models.resolve import ModelResolutionError, bundled_index, resolve_model_config
    from recipe_checks.models.skeleton import ModelBuildError, build_meta_model

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
    if not 1 <= gpus <= MAX_GPUS:
        raise InitError(f"--gpus {gpus}: give 1 to {MAX_GPUS}")
    if batch is None:
        batch = -(-16 // gpus) * gpus
    elif batch % gpus:
        lower, upper = batch // gpus * gpus, -(-batch // gpus) * gpus
        raise InitError(f"--batch {batch} is not a multiple of --gpus {gpus}: each GPU takes an equal share of "
                        f"the effective batch; give --batch {upper}" + (f" or {lower}" if lower else ""))
    precision, why = precision_for(gpu, resolved.model_type)
    targets, conv1d = linear_targets(model) if method != "full" else ((), False)
    spec = Spec(model=entry.hub_id if entry else model_name, model_type=resolved.model_type, gpu=gpu.key,
                gpu_name=gpu.name, method=method, precision=precision, precision_why=why, targets=targets,
                fan_in_fan_out=conv1d, seq_len=seq_len, batch=batch,
                attn_implementation="sdpa" if getattr(type(model), "_supports_sdpa", False) else "eager",
                gpus=gpus, parameters=sum({id(p): p.numel() for p in model.parameters()}.values()))
    return spec, resolved, model


def verify(proposal: Proposal, catalog: GpuCatalog, path: str = "<init recipe>") -> list:
    """Every check but the real steps (static, and vram: the same trace, cached) on the text written."""
    from recipe_checks.engine import run_check
    from recipe_checks.rules import CHECKS, GPU_CHECKS, RUN_CHECKS

    spec = proposal.spec
    state = candidate_state(spec, proposal.chosen, catalog, text=proposal.text, path=path)
    return [run_check(state, check, spec.gpu if check in GPU_CHECKS else None) for check in CHECKS
            if check not in RUN_CHECKS]
