"""AWS rules for s3 (see the package docstring)."""
