"""AWS rules for iot (see the package docstring)."""
