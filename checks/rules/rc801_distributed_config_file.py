"""RC801: the DeepSpeed and accelerate files a distributed section names can be read, and agree with the recipe."""

from __future__ import annotations

from recipe_checks.findings import Severity
from recipe_checks.rules.base import Rule


class DistributedConfigFile(Rule):
    """
    ## What it checks
    The files `distributed.deepspeed` (a DeepSpeed JSON) and `distributed.accelerate_config` (an
    `accelerate config` YAML) name, relative to the recipe: each exists, is a regular file within the
    size limits (a symbolic link must not lead out of the folder the path names), parses (JSON; YAML with
    safe loading), is a mapping with the types and keys DeepSpeed and accelerate take, and says nothing
    the recipe's own distributed fields contradict. Each problem is one finding at the recipe's key, with
    the file's line and key in the message (docs/distributed-configs.md lists what is read).

    ## Why it matters
    The strategy, the number of GPUs and the offload settings come from these files: one that cannot be
    read leaves the section meaning nothing, and one the recipe contradicts is checked as something the
    run does not do. DeepSpeed refuses unknown keys inside `zero_optimization` and ignores unknown
    top-level keys (a misspelt `zero_optimisation` silently trains without ZeRO); accelerate refuses a
    config file with unknown keys.

    ## Example
        distributed:
          deepspeed: ds_zero3.json     # {"zero_optimization": {"stage": 2}}
          strategy: zero3              # contradicts the file

    ## Use instead
        distributed:
          deepspeed: ds_zero3.json     # the strategy and offload come from the file
          world_size: 8
    """

    id = "RC801"
    name = "distributed-config-file"
    check = "schema"
    why = "the distributed section's strategy, world size and offload are read from these files"

    def run(self, ctx):
        files = ctx.state.loaded.distributed_files if ctx.state.loaded is not None else None
        if files is None:
            return
        for problem in files.problems:
            yield self.finding(
                ctx, problem.message, problem.at, help=problem.help,
                severity=Severity.ERROR if problem.severity == "error" else Severity.WARNING,
                details=[f"file: {problem.place}"] if problem.place is not None else (),
            )
