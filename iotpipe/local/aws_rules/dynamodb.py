"""AWS rules for dynamodb (see the package docstring)."""
