"""RC109: every rule a recipe ignores exists and would have reported something."""

from __future__ import annotations

from checks.findings import Finding
from checks.rules.base import Rule


class UnusedIgnore(Rule):
    """
    ## What it checks
    Each rule id in `checks.ignore` is a real rule, and ignoring it suppresses at least one finding
    of this recipe.

    ## Why it matters
    A stale ignore documents an exception that no longer exists, and silently hides the rule if the
    problem comes back; a misspelt id ignores nothing at all.

    ## Example
        checks:
          ignore: {RC301: "paged optimizer not needed"}   # while optim is already paged

    ## Use instead
    Remove the entry.
    """

    id = "RC109"
    name = "unused-ignore"
    check = "schema"
    why = "a stale or misspelt ignore hides nothing today and the wrong thing tomorrow"

    def run(self, ctx):
        return ()  # computed after the other checks ran: see unused_ignore_findings


def unused_ignore_findings(state, run_check) -> list[Finding]:
    """Findings for the recipe's ignores that suppress nothing, over every check of this run."""
    from checks.context import RecipeContext
    from checks.engine import gpus_for
    from checks.rules import CHECKS, GPU_CHECKS, TRACED_CHECKS, all_rules
    from checks.suggest import did_you_mean

    recipe = state.recipe
    if recipe is None or not recipe.checks.ignore or not state.schema_ok:
        return []
    rule = UnusedIgnore()
    ctx = RecipeContext(state)
    known = {r.id: r for r in all_rules()}
    used: set[str] = set()
    ran: set[str] = set()
    for check in CHECKS:
        if check == "schema":
            continue
        for gpu in gpus_for(state, state.options) if check in GPU_CHECKS else [None]:
            if check in TRACED_CHECKS and (check, gpu) not in state.results:
                continue  # never trace a step just to judge an ignore; judged when the check ran first
            result = run_check(state, check, gpu)
            if result.skipped is None and result.error is None:
                ran.add(check)
                used.update(f.rule_id for f in result.suppressed)
    findings = []
    for written in recipe.checks.ignore:
        rule_id = written.strip().upper()
        key = ("checks", "ignore", written)
        if rule_id not in known:
            hint = did_you_mean(rule_id, known)
            findings.append(rule.finding(
                ctx, f"ignored rule '{written}' does not exist", key, at_value=False,
                help=f"{hint} `recipe-checks explain` lists the rules.".strip(),
            ))
        elif known[rule_id].check in ran and rule_id not in used:
            findings.append(rule.finding(
                ctx, f"ignoring {rule_id} ({known[rule_id].name}) suppresses nothing in this recipe",
                key, at_value=False, help="remove the entry: the recipe no longer needs the exception",
            ))
    return findings
