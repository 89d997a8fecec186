"""AWS rules for glue (see the package docstring)."""
