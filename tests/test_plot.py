"""`recipe-checks estimate --plot FILE.png`: a PNG that matplotlib reads back, of a sensible size, and
a clear usage error where matplotlib or the folder is missing."""

from __future__ import annotations

import sys
import textwrap

import pytest

from recipe_checks.cli import main
from recipe_checks.gpus import GpuCatalog
from recipe_checks.plot import neighbours

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# SmolLM2-135M at 128 tokens traces in about a second; a 1 GiB budget makes it not fit, so the fixes
# are traced and drawn too.
RECIPE = textwrap.dedent("""\
    model: HuggingFaceTB/SmolLM2-135M
    lora: {r: 8, lora_alpha: 16, target_modules: [q_proj, v_proj]}
    training:
      per_device_train_batch_size: 4
      bf16: true
      max_seq_length: 128
    hardware:
      gpu: rtx4060
    """)


@pytest.fixture
def recipe(tmp_path):
    def write(extra: str = "") -> str:
        path = tmp_path / "smol.yaml"
        path.write_text(RECIPE + extra)
        return str(path)
    return write


def _assert_png(path) -> tuple[int, int]:
    from matplotlib import image

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 20_000 < len(data) < 2_000_000
    pixels = image.imread(path)  # decodes the whole file
    height, width = pixels.shape[:2]
    assert 600 <= width <= 2000 and 400 <= height <= 1500
    assert pixels.std() > 0.05  # not a blank canvas
    return width, height


def test_plot_of_a_recipe_that_does_not_fit_draws_the_breakdown_budgets_and_fixes(recipe, tmp_path, capsys):
    png = tmp_path / "estimate.png"
    code = main(["estimate", recipe("  vram_budget_gib: 1.0\n"), "--plot", str(png)])
    out = capsys.readouterr().out
    assert code == 1  # does not fit: the plot is written all the same
    assert f"plot: {png}" in out and "fix:" in out
    _assert_png(png)


def test_plot_of_a_recipe_that_fits_and_json_output_together(recipe, tmp_path, capsys):
    png = tmp_path / "fits.png"
    code = main(["estimate", recipe(), "--plot", str(png), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out.lstrip().startswith("{")  # stdout stays one JSON object; the plot line goes to stderr
    assert f"plot: {png}" in captured.err
    _assert_png(png)


def test_plot_without_matplotlib_exits_2_naming_the_extra(recipe, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    png = tmp_path / "none.png"
    assert main(["estimate", recipe(), "--plot", str(png)]) == 2
    assert "pip install 'recipe-checks[plot]'" in capsys.readouterr().err
    assert not png.exists()


def test_plot_into_a_missing_folder_exits_2_before_tracing(recipe, tmp_path, capsys):
    assert main(["estimate", recipe(), "--plot", str(tmp_path / "no" / "such" / "x.png")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_neighbours_are_the_next_smaller_and_larger_cards_that_train_in_the_precision():
    catalog = GpuCatalog.load()
    target = catalog.get("rtx4090")
    smaller, larger = neighbours(catalog, target, "bfloat16")
    assert smaller.memory_gb < target.memory_gb < larger.memory_gb  # the spec sheet's GB: a 3090 is no neighbour
    between = [p for p in catalog if p.supports_bf16 and smaller.memory_gb < p.memory_gb < larger.memory_gb
               and p.memory_gb != target.memory_gb]
    assert between == [] and smaller.supports_bf16 and larger.supports_bf16
    rtx4060 = catalog.get("rtx4060")  # the smallest card: a larger neighbour only; a bf16 one is no K80
    assert [p.key for p in neighbours(catalog, rtx4060, "float16")] == ["k80"]
    assert "k80" not in [p.key for p in neighbours(catalog, rtx4060, "bfloat16")]
    assert [p.key for p in neighbours(catalog, catalog.get("h200"), "bfloat16")][-1] != "h200"
    assert len(neighbours(catalog, catalog.get("h200"), "bfloat16")) == 1  # the largest card has no larger one


def test_a_file_name_with_dollar_signs_is_drawn_literally_not_as_mathtext(tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    saved = []
    savefig = Figure.savefig

    def keep(figure, *args, **kwargs):  # the figure as written, to read its texts back
        savefig(figure, *args, **kwargs)
        saved.append(figure)

    monkeypatch.setattr(Figure, "savefig", keep)
    name = "x$\\sqrt{$.yaml"  # mathtext raised on it: ParseSyntaxException, a traceback out of `estimate --plot`
    path = tmp_path / name
    path.write_text(RECIPE)
    png = tmp_path / "dollar.png"
    assert main(["estimate", str(path), "--plot", str(png)]) == 0
    assert f"plot: {png}" in capsys.readouterr().out
    _assert_png(png)
    (figure,) = saved
    texts = [t for t in figure.findobj(Text) if t.get_text()]
    assert texts and all(not t.get_parse_math() and not t.get_usetex() for t in texts)  # tick labels too
    title = figure.axes[0].get_title()
    assert title.startswith(f"{name} on rtx4060 ")
