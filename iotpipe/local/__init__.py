"""The local emulator and data plane: what `demo`, `local serve` and the tests run offline.

Nothing on the real-AWS path imports this package. It needs the `local` extra (moto, DuckDB,
sqlglot).
"""
