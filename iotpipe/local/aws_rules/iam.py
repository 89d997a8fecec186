"""AWS rules for iam (see the package docstring)."""
