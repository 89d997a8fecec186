"""AWS rules for firehose (see the package docstring)."""
