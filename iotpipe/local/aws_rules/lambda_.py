"""AWS rules for lambda_ (see the package docstring)."""
