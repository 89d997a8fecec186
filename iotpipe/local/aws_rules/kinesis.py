"""AWS rules for kinesis (see the package docstring)."""
