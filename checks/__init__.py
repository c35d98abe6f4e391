"""recipe-checks: verify fine-tuning recipes against a target GPU before spending GPU hours.

The data path: load (recipe.load) -> typed Recipe (recipe.schema) -> resolve model skeleton and
GPU profile (models, gpus) -> rules (rules.*) -> Findings (findings) -> render (render, plugin, cli).

PYTEST_DONT_REWRITE: the plugin reports findings, not assertions, so pytest need not rewrite this
package's asserts; the marker also keeps pytest from warning that the package was imported before
a run (pytester runs in the test suite import it first, by design: tests/conftest.py).
"""

__version__ = "0.1.0"
