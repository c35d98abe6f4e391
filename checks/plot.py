"""The traced estimate as a picture (`recipe-checks estimate RECIPE --plot FILE.png`): the breakdown at
the peak as a stacked bar, the budgets of the target GPU and its neighbours, the traced fixes.

matplotlib (the `plot` extra) is imported only here, and only when a plot is asked for; the figure
is drawn on matplotlib's Agg canvas, never through pyplot's global state or a display.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from recipe_checks.gpus import GIB

EXTRA_HINT = "pip install 'recipe-checks[plot]'"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed: the message names the extra that brings it."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed: {EXTRA_HINT}") from None


def neighbours(catalog, gpu, precision: str = "float32") -> list:
    """The next smaller and the next larger card of the catalog by memory (the spec sheet's GB: an RTX
    3090 and 4090 are both 24 GB) among those that train in `precision` (a bf16 recipe's neighbours
    have bf16); none where there is none."""
    usable = [p for p in catalog if precision != "bfloat16" or p.supports_bf16]
    smaller = [p for p in usable if p.memory_gb < gpu.memory_gb]
    larger = [p for p in usable if p.memory_gb > gpu.memory_gb]
    out = []
    if smaller:
        out.append(max(smaller, key=lambda p: (p.memory_gb, p.key)))
    if larger:
        out.append(min(larger, key=lambda p: (p.memory_gb, p.key)))
    return out


def _fix_label(fix) -> str:
    """A fix's name without its parenthesis, wrapped; a combination names each fix it applies."""
    names = getattr(fix, "parts", ()) or (fix.name,)
    return "\n+ ".join(textwrap.fill(name.split(" (", 1)[0], 16) for name in names)


# The figure shows text from the user (the recipe's file name, GPU profile keys from --gpu-profiles) and no
# formula: every text object is drawn literally. A '$' pair would start matplotlib's mathtext, which raises on
# `x$\sqrt{$.yaml`, and usetex would hand the name to a LaTeX process.
LITERAL_TEXT = {"text.parse_math": False, "text.usetex": False}


def plot_estimate(path: str | Path, result, *, recipe, recipe_name: str, gpu, catalog) -> None:
    """Write the figure of one Estimate (recipe_checks.memory.estimate) of `recipe` to `path` as a PNG."""
    require_matplotlib()
    from matplotlib import rc_context

    # Text objects read these settings when they are made, and tick labels are made while the figure is
    # drawn, so the whole figure, its saving included, is made under them.
    with rc_context(LITERAL_TEXT):
        _draw_estimate(path, result, recipe=recipe, recipe_name=recipe_name, gpu=gpu, catalog=catalog)


def _draw_estimate(path: str | Path, result, *, recipe, recipe_name: str, gpu, catalog) -> None:
    from matplotlib.figure import Figure

    from recipe_checks.memory.estimate import budget_for

    peak = result.peak_bytes / GIB
    budget = result.budget_bytes / GIB
    verdict = "fits" if result.fits else ("fits only if paged state spills" if result.fits_with_paging
                                          else "does NOT fit")
    # a neighbour's budget is its own memory less the margin, whatever budget the recipe sets for its target
    plain = recipe.model_copy(update={"hardware": recipe.hardware.model_copy(update={"vram_budget_gib": None})})
    others = [(p, budget_for(plain, p)[0] / GIB) for p in neighbours(catalog, gpu, recipe.training_dtype)]
    fixes = list(result.fixes)
    top = max([peak, budget, *(b for _, b in others), *(f.peak_bytes / GIB for f in fixes)]) * 1.12

    fig = Figure(figsize=(11, 6.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    categories = sorted(result.breakdown.items(), key=lambda kv: -kv[1])
    colors = _palette(len(categories))
    bottom = 0.0
    for (category, nbytes), color in zip(categories, colors):
        height = nbytes / GIB
        ax.bar(0, height, bottom=bottom, width=0.6, color=color, edgecolor="white", linewidth=0.6,
               label=f"{category.replace('_', ' ')}  {height:.2f} GiB")
        if height >= 0.035 * top:  # label the segments tall enough to hold a line of text
            ax.text(0, bottom + height / 2, f"{category.replace('_', ' ')}\n{height:.2f} GiB", ha="center",
                    va="center", fontsize=8, color=_text_color(color))
        bottom += height
    ax.text(0, peak + top * 0.01, f"peak {peak:.2f} GiB", ha="center", va="bottom", fontsize=9, fontweight="bold")

    for i, fix in enumerate(fixes, start=1):
        height = fix.peak_bytes / GIB
        ax.bar(i, height, width=0.6, color="#4c9a5a" if fix.fits else "#c4635a", alpha=0.85,
               edgecolor="black", linewidth=0.5, hatch="//")
        ax.text(i, height + top * 0.01, f"{height:.2f} GiB\n{'fits' if fix.fits else 'does not fit'}",
                ha="center", va="bottom", fontsize=8)

    right = max(len(fixes), 1.5) + 0.55  # budget labels sit at the right end of their line, above it
    box = {"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1}
    lines = sorted([(budget, f"{gpu.key} budget {budget:.2f} GiB", True)]
                   + [(other, f"{p.key} ({'smaller' if other < budget else 'larger'} card) {other:.2f} GiB", False)
                      for p, other in others])
    label_y = -top
    for value, label, target in lines:
        ax.axhline(value, color="black" if target else "#666666", linewidth=2 if target else 1.2,
                   linestyle="-" if target else "--")
        label_y = max(value, label_y + 0.04 * top)  # labels of close lines stacked, not overlapping
        ax.text(right, label_y, label, va="bottom", ha="right", fontsize=9 if target else 8,
                fontweight="bold" if target else "normal", color="black" if target else "#444444", bbox=box)

    ax.set_xticks(range(len(fixes) + 1), ["as written", *(f"fix:\n{_fix_label(f)}" for f in fixes)],
                  fontsize=8)
    ax.set_xlim(-0.6, right + 0.05)
    ax.set_ylim(0, top)
    ax.set_ylabel("GiB at the peak of one training step (traced)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(f"{recipe_name} on {gpu.key} ({recipe.method_label}): peak {peak:.2f} GiB, budget {budget:.2f} GiB: {verdict}",
                 fontsize=11)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], title=f"at the peak ({result.peak_phase})", loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=9, frameon=False)
    fig.savefig(path, format="png")


def _palette(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _text_color(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"
