"""Entry points for function platforms: thin adapters around the one receiver app."""
