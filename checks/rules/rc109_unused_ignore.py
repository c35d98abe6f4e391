"""RC109: every rule a recipe ignores exists and would have reported something."""

from __future__ import annotations

from typing import TYPE_CHECKING

from recipe_checks.findings import Finding
from recipe_checks.rules.base import Rule

if TYPE_CHECKING:
    from recipe_checks.context import RecipeContext


class UnusedIgnore(Rule):
    """
    ## What it checks
    Each rule id in `checks.ignore` is a real rule, and ignoring it suppresses at least one finding
    of this recipe. It runs after every other check of the recipe (the `ignores` item, collected
    for recipes that ignore something), over the checks that ran, schema and vram included.

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
    check = "ignores"
    reads = frozenset({"checks"})
    why = "a stale or misspelt ignore hides nothing today and the wrong thing tomorrow"

    def run(self, ctx):
        return ()  # a post-pass over the checks that ran: the engine calls unused_ignore_findings


def unused_ignore_findings(ctx: RecipeContext, judged: set[str], used: set[str]) -> list[Finding]:
    """Findings for the recipe's ignores that suppress nothing.

    `judged`: the ids of the rules that reached a verdict on this recipe; `used`: the rule ids an
    ignore suppressed there. An ignore of a rule that did not run (its check deselected or skipped,
    or the rule waiting for a broken section) is not judged.
    """
    from recipe_checks.rules import all_rules
    from recipe_checks.suggest import did_you_mean

    recipe = ctx.state.recipe
    if recipe is None or not recipe.checks.ignore:
        return []
    rule = UnusedIgnore()
    known = {r.id: r for r in all_rules()}
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
        elif rule_id in judged and rule_id not in used:
            findings.append(rule.finding(
                ctx, f"ignoring {rule_id} ({known[rule_id].name}) suppresses nothing in this recipe",
                key, at_value=False, help="remove the entry: the recipe no longer needs the exception",
            ))
    return findings
