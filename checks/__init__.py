"""recipe-checks: verify fine-tuning recipes against a target GPU before spending GPU hours.

The data path: load (recipe.load) -> typed Recipe (recipe.schema) -> resolve model skeleton and
GPU profile (models, gpus) -> rules (rules.*) -> Findings (findings) -> render (render, plugin, cli).
"""

__version__ = "0.1.0"
