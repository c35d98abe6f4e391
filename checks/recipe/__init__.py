"""The recipe format: loading YAML with source positions, and the typed schema it validates into."""
