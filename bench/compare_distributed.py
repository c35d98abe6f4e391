"""Compare recipe-checks' traced per-rank peak with published multi-GPU peak-memory measurements.

Run:  python bench/compare_distributed.py [--dry-run] [--only TEXT]
Each entry of bench/distributed_measurements.yaml (source, quote and kind of figure for each) is turned
into a native recipe with a `distributed` section (strategy, world_size, fsdp / zero options) and
estimated with recipe_checks.memory.estimate.estimate. The figure compared is rank 0's traced tensor peak,
`est.trace.timeline.peak_bytes` (what torch.cuda.max_memory_allocated counts); 'reserved' figures also
hold the caching allocator's cache and 'nvidia-smi' ones the CUDA context, so they are expected to read
higher, and 'unknown' ones may be either. The trace shards with FSDP2 (fully_shard); fsdp_version 1
entries (accelerate's FullyShardedDataParallel, flat parameters) are compared with it all the same, and
the `fsdp` column says which they were. Entries whose model has no config here, whose batch or length is
unstated, or whose settings a recipe cannot say are listed as skipped with the reason.

--dry-run builds and validates every recipe (recipe_checks.recipe.schema.Recipe) without tracing anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipe_checks.gpus import GIB, GpuCatalog  # noqa: E402
from recipe_checks.models.resolve import ModelResolutionError, resolve_model_config  # noqa: E402
from recipe_checks.recipe.schema import STRATEGIES, Recipe  # noqa: E402

MEASUREMENTS = Path(__file__).with_name("distributed_measurements.yaml")
# torchtune's projection names -> transformers' (torchtune/modules/peft: LORA_ATTN_MODULES)
TORCHTUNE_NAMES = {"output_proj": "o_proj", "w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
# the GPU profile an entry that names no exact card is estimated on: only the budget depends on it,
# not the traced peak that is compared
FALLBACK_GPU = "h200"


def recipe_for(entry: dict) -> dict | str:
    """The native recipe the entry's stated settings make, or the reason they cannot make one."""
    if not entry.get("micro_batch_size") or not entry.get("seq_len"):
        return "micro-batch or sequence length not stated"
    strategy, world = entry.get("strategy"), int(entry.get("world_size") or 1)
    if strategy is not None and strategy not in STRATEGIES:
        return f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}"
    if strategy is None and world > 1:
        return f"{world} GPUs but no strategy stated"
    model = {"id": entry["model"]}
    if entry.get("weights_dtype"):
        model["torch_dtype"] = entry["weights_dtype"]
    if entry.get("attn_implementation"):
        model["attn_implementation"] = entry["attn_implementation"]
    autocast = entry.get("autocast")
    if autocast not in (None, "bf16", "fp16"):
        return f"autocast {autocast!r} is not bf16 or fp16"
    training = {
        "per_device_train_batch_size": int(entry["micro_batch_size"]),
        "gradient_accumulation_steps": int(entry.get("gradient_accumulation_steps") or 1),
        "max_seq_length": int(entry["seq_len"]),
        "gradient_checkpointing": bool(entry.get("gradient_checkpointing")),
        "optim": entry.get("optimizer") or "adamw_torch",
        "bf16": autocast == "bf16",
        "fp16": autocast == "fp16",
    }
    recipe: dict = {"model": model, "training": training}
    method = entry["method"]
    if method in ("lora", "qlora", "dora"):
        targets = entry.get("target_modules")
        if not targets:
            return "target modules not stated"
        if isinstance(targets, list):
            targets = [TORCHTUNE_NAMES.get(t, t) for t in targets]
        lora = {"r": int(entry["lora_r"]), "lora_alpha": float(entry.get("lora_alpha") or 2 * entry["lora_r"]),
                "lora_dropout": float(entry.get("lora_dropout") or 0.0), "target_modules": targets,
                "task_type": "CAUSAL_LM"}
        if method == "dora":
            lora["use_dora"] = True
        recipe["lora"] = lora
    elif method != "full":
        return f"method {method!r} is not full, lora, qlora or dora"
    q = entry.get("quantization") or {}
    if method == "qlora":
        if not q.get("load_in_4bit"):
            return "QLoRA without a 4-bit quantization stated"
        quant = {"load_in_4bit": True, "bnb_4bit_quant_type": q.get("bnb_4bit_quant_type") or "nf4",
                 "bnb_4bit_use_double_quant": bool(q.get("bnb_4bit_use_double_quant"))}
        if q.get("bnb_4bit_compute_dtype"):
            quant["bnb_4bit_compute_dtype"] = q["bnb_4bit_compute_dtype"]
        if q.get("bnb_4bit_quant_storage"):
            quant["bnb_4bit_quant_storage"] = q["bnb_4bit_quant_storage"]
        recipe["quantization"] = quant
    if strategy is not None:
        section: dict = {"strategy": strategy, "world_size": world}
        if strategy == "fsdp" and entry.get("fsdp"):
            fsdp = {k: v for k, v in entry["fsdp"].items() if v is not None}
            if fsdp.get("mp_policy"):
                fsdp["mp_policy"] = {k: v for k, v in fsdp["mp_policy"].items() if v is not None}
            section["fsdp"] = fsdp
        if strategy.startswith("zero") and entry.get("zero"):
            section["zero"] = {k: v for k, v in entry["zero"].items() if v is not None}
        recipe["distributed"] = section
    if entry.get("gpu"):
        recipe["hardware"] = {"gpu": entry["gpu"]}
    return recipe


def label(entry: dict) -> str:
    """strategy x world size, and the FSDP generation: 'fsdp1 x2', 'zero3 x8', '1 GPU'."""
    strategy = entry.get("strategy")
    if strategy is None:
        return "1 GPU"
    version = entry.get("fsdp_version") if strategy == "fsdp" else None
    return f"{strategy}{version or ''} x{entry.get('world_size')}"


def prepare(entry: dict):
    """(recipe, resolved model) or the reason the entry is skipped."""
    if entry["kind"] == "estimate":
        return "the published figure is itself an estimate"
    try:
        resolved = resolve_model_config(entry["model"])
    except ModelResolutionError:
        return f"no config for {entry['model']} here"
    built = recipe_for(entry)
    if isinstance(built, str):
        return built
    try:
        recipe = Recipe.model_validate(built)
    except ValueError as exc:  # pydantic's ValidationError: the mapping above made a recipe the schema refuses
        return f"the recipe is not valid: {' '.join(str(exc).split())}"[:200]
    return recipe, resolved


def dry_run(entries: list[dict]) -> int:
    valid = skipped = invalid = 0
    print(f"{'id':<50}{'setup':<13}recipe")
    for entry in entries:
        prepared = prepare(entry)
        if isinstance(prepared, str):
            bad = prepared.startswith("the recipe is not valid")
            invalid += bad
            skipped += not bad
            print(f"{entry['id']:<50}{label(entry):<13}{'INVALID' if bad else 'skipped'}: {prepared}")
            continue
        recipe, _ = prepared
        valid += 1
        dist = recipe.distributed
        where = (f"{dist.strategy}, world_size {dist.size}"
                 + (f", fsdp {dist.fsdp.model_dump(exclude_none=True)}" if dist.fsdp else "")
                 + (f", zero {dist.zero.model_dump(exclude_none=True)}" if dist.zero else "")) if dist else "one GPU"
        print(f"{entry['id']:<50}{label(entry):<13}ok: {recipe.method.label}, mb {recipe.training.per_device_train_batch_size}"
              f" x {recipe.training.max_seq_length}, {where}")
    print(f"\n{valid} valid, {skipped} skipped, {invalid} invalid (of {len(entries)})")
    return 1 if invalid else 0


def compare(entries: list[dict]) -> int:
    from recipe_checks.memory.estimate import Estimate, TraceError, estimate

    # the per-rank engine's Estimate says the world size it traced; without it a distributed recipe would be
    # traced as one GPU, so those entries are skipped before their trace
    per_rank = hasattr(Estimate, "world_size") or (
        dataclasses.is_dataclass(Estimate) and "world_size" in {f.name for f in dataclasses.fields(Estimate)})
    catalog = GpuCatalog.load()
    errors: dict[str, list[tuple[float, str]]] = {}
    print(f"{'id':<50}{'setup':<13}{'kind':<10}{'published':>10}{'traced':>9}{'error':>9}  framework")
    for entry in entries:
        prepared = prepare(entry)
        if isinstance(prepared, str):
            print(f"{entry['id']:<50}{label(entry):<13}skipped: {prepared}")
            continue
        recipe, resolved = prepared
        wanted = recipe.distributed.size if recipe.distributed else 1
        if wanted > 1 and not per_rank:
            print(f"{entry['id']:<50}{label(entry):<13}skipped: the estimate has no world_size "
                  "(distributed recipes are not traced per rank yet)")
            continue
        gpu = catalog.get(entry.get("gpu") or FALLBACK_GPU)
        try:
            est = estimate(recipe, resolved, gpu, with_fixes=False)
        except Exception as exc:  # an entry the trace cannot run is reported, not fatal
            reason = str(exc) if isinstance(exc, TraceError) else f"{type(exc).__name__}: {exc}"
            print(f"{entry['id']:<50}{label(entry):<13}skipped: cannot trace ({reason})"[:220])
            continue
        world = getattr(est, "world_size", None)
        if world is None and wanted > 1:
            print(f"{entry['id']:<50}{label(entry):<13}skipped: the estimate has no world_size "
                  "(distributed recipes are not traced per rank yet)")
            continue
        if world is not None and world != wanted:
            print(f"{entry['id']:<50}{label(entry):<13}skipped: traced world size {world}, the entry's is {wanted}")
            continue
        traced = est.trace.timeline.peak_bytes / GIB
        error = (traced - entry["figure_gib"]) / entry["figure_gib"]
        errors.setdefault(entry["kind"], []).append((abs(error), entry["id"]))
        differences = entry.get("framework_differences") or []
        framework = entry.get("framework", "") + (f" ({len(differences)} differences)" if differences else "")
        print(f"{entry['id']:<50}{label(entry):<13}{entry['kind']:<10}{entry['figure_gib']:>9.2f}G{traced:>8.2f}G"
              f"{error:>+9.1%}  {framework}")
    if errors:
        print()
        for kind, values in sorted(errors.items()):
            worst = max(values)
            print(f"{kind:<10} compared {len(values)}: median absolute error "
                  f"{statistics.median(e for e, _ in values):.1%}, worst {worst[0]:.1%} ({worst[1]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="only build and validate the recipes")
    parser.add_argument("--only", metavar="TEXT", help="only the entries whose id contains TEXT")
    args = parser.parse_args(argv)
    entries = yaml.safe_load(MEASUREMENTS.read_text(encoding="utf-8"))
    if args.only:
        entries = [e for e in entries if args.only in e["id"]]
    return dry_run(entries) if args.dry_run else compare(entries)


if __name__ == "__main__":
    sys.exit(main())
