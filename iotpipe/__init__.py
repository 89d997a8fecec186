"""iotpipe: provision and operate an AWS IoT data pipeline as an idempotent reconciler."""

__version__ = "0.1.0"
