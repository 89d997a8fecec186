"""The archive line's columns: what the processor writes for each valid reading, in this order,
with the Hive types the Glue table declares them in (iotpipe/resources/glue.py loads this file).

Every field of a reading is kept: the message contract's own as columns, any other under
"extra" (JSON text). It imports nothing, so iotpipe can read it from the source tree.
"""

ARCHIVE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("device_id", "string"),
    ("ts", "bigint"),
    ("seq", "bigint"),
    ("received_at", "bigint"),
    ("metrics", "map<string,double>"),
    ("extra", "string"),
)
