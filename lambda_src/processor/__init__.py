"""The stream processor: Kinesis batches of device readings to device state, time series, archive.

The pipeline is `handler.lambda_handler`: decode and validate each record (`validate`), route the
valid readings to the sinks in as few calls as AWS allows (`sinks`), retry partial failures within
the invocation's time budget (`retry`), and report what still failed as a partial batch response.
"""
