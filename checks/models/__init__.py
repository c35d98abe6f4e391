"""Models without weights: resolve a recipe's model to its config.json, build it on the meta device."""
