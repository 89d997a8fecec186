"""Firehose delivery to S3, locally: buffering, the configured prefix expanded, GZIP, AWS's names.

The emulator accepts PutRecord/PutRecordBatch but writes one S3 object per call with the prefix
unexpanded. The embedded emulator runs in this process, so `LocalDelivery.install()` takes over
its S3 delivery for one delivery stream: the API call still goes over HTTP to the emulator (which
checks the stream exists and answers with record ids, as AWS does), and the records land in this
buffer instead of an object of their own. The buffer flushes as Firehose does, at the stream's
buffering size or interval, to `<prefix><stream>-<version>-yyyy-MM-dd-HH-mm-ss-<uuid>[.gz]`, with
the prefix's `!{...}` expressions evaluated at the arrival time of the buffer's first record.
The delivery configuration (bucket, prefixes, buffering hints, compression) is read back from
the emulator with DescribeDeliveryStream, so it is exactly what `up` created.
"""

from __future__ import annotations

import gzip
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from iotpipe.errors import UsageError
from iotpipe.local import moto_patches

if TYPE_CHECKING:
    from iotpipe.aws import Aws

# Java DateTimeFormatter letters Firehose prefixes use, as strftime directives.
_DATE_LETTERS = {
    "yyyy": "%Y",
    "yy": "%y",
    "MM": "%m",
    "dd": "%d",
    "HH": "%H",
    "mm": "%M",
    "ss": "%S",
}
_DATE_TOKEN = re.compile(r"yyyy|yy|MM|dd|HH|mm|ss|[A-Za-z]|[^A-Za-z]+")
_EXPRESSION = re.compile(r"!\{([^}]*)\}")
_RANDOM_ALPHABET = string.ascii_letters + string.digits


def _format_timestamp(pattern: str, at: datetime) -> str:
    parts = []
    for token in _DATE_TOKEN.findall(pattern):
        if token in _DATE_LETTERS:
            parts.append(at.strftime(_DATE_LETTERS[token]))
        elif token.isalpha():
            raise UsageError(
                f"timestamp pattern {pattern!r}: letter {token!r} is not supported locally",
                hint="use yyyy, yy, MM, dd, HH, mm, ss",
            )
        else:
            parts.append(token)
    return "".join(parts)


def expand_prefix(prefix: str, arrival: datetime, *, error_output_type: str | None = None) -> str:
    """Evaluate a Firehose S3 prefix as AWS does for a buffer whose first record came at `arrival`.

    `!{timestamp:<pattern>}` uses the arrival time in UTC, `!{firehose:random-string}` is 11
    random characters, `!{firehose:error-output-type}` is only valid in the error prefix. A prefix
    without expressions gets AWS's default `YYYY/MM/dd/HH/` appended.
    """
    at = arrival.astimezone(UTC)
    if not _EXPRESSION.search(prefix):
        return prefix + at.strftime("%Y/%m/%d/%H/")

    def evaluate(match: re.Match[str]) -> str:
        namespace, _, value = match[1].partition(":")
        if namespace == "timestamp":
            return _format_timestamp(value, at)
        if namespace == "firehose" and value == "random-string":
            return "".join(secrets.choice(_RANDOM_ALPHABET) for _ in range(11))
        if namespace == "firehose" and value == "error-output-type":
            if error_output_type is None:
                raise UsageError(
                    f"prefix {prefix!r}: !{{firehose:error-output-type}} is only valid in the "
                    "error output prefix"
                )
            return error_output_type
        raise UsageError(
            f"prefix {prefix!r}: expression !{{{match[1]}}} is not supported",
            hint="use !{timestamp:...}, !{firehose:random-string}, !{firehose:error-output-type}",
        )

    return _EXPRESSION.sub(evaluate, prefix)


def object_name(stream: str, version: str, arrival: datetime, compression: str) -> str:
    """AWS's object name: <stream>-<version>-yyyy-MM-dd-HH-mm-ss-<uuid>, .gz when GZIP."""
    stamp = arrival.astimezone(UTC).strftime("%Y-%m-%d-%H-%M-%S")
    suffix = ".gz" if compression == "GZIP" else ""
    return f"{stream}-{version}-{stamp}-{uuid.uuid4()}{suffix}"


@dataclass(frozen=True)
class DeliveryConfig:
    stream: str
    version: str
    bucket: str
    prefix: str
    error_prefix: str
    buffer_bytes: int
    buffer_seconds: int
    compression: str

    @property
    def buffering(self) -> str:
        """The buffering hints in words: when Firehose writes what it holds."""
        return f"up to {self.buffer_seconds} s or {self.buffer_bytes // 1024**2} MiB"

    @property
    def destination(self) -> str:
        """s3://bucket/<the folders of the prefix before its first expression>/."""
        fixed = self.prefix.split("!{", 1)[0]
        return f"s3://{self.bucket}/{fixed[: fixed.rfind('/') + 1]}"

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> DeliveryConfig:
        """From a DescribeDeliveryStream response's DeliveryStreamDescription."""
        name = description["DeliveryStreamName"]
        destinations = description.get("Destinations") or []
        s3 = next(
            (
                d.get("ExtendedS3DestinationDescription") or d.get("S3DestinationDescription")
                for d in destinations
                if d.get("ExtendedS3DestinationDescription") or d.get("S3DestinationDescription")
            ),
            None,
        )
        if s3 is None:
            raise UsageError(f"delivery stream {name}: only S3 destinations run locally")
        conversion = s3.get("DataFormatConversionConfiguration") or {}
        if conversion.get("Enabled"):
            raise UsageError(
                f"delivery stream {name}: record format conversion (Parquet) does not run locally",
                hint='use [archive] format = "gzip" for the demo and local serve',
            )
        compression = s3.get("CompressionFormat", "UNCOMPRESSED")
        if compression not in ("GZIP", "UNCOMPRESSED"):
            raise UsageError(
                f"delivery stream {name}: {compression} compression does not run locally"
            )
        hints = s3.get("BufferingHints") or {}
        config = cls(
            stream=name,
            version=str(description.get("VersionId", "1")),
            bucket=s3["BucketARN"].split(":::", 1)[1],
            prefix=s3.get("Prefix") or "",
            error_prefix=s3.get("ErrorOutputPrefix") or "",
            buffer_bytes=int(hints.get("SizeInMBs", 5)) * 1024 * 1024,
            buffer_seconds=int(hints.get("IntervalInSeconds", 300)),
            compression=compression,
        )
        # AWS rejects an invalid prefix when the stream is created; do the same before any data.
        now = datetime.now(UTC)
        expand_prefix(config.prefix, now)
        if config.error_prefix:
            expand_prefix(config.error_prefix, now, error_output_type="processing-failed")
        return config


# (account, region, delivery stream) -> the local delivery that receives its records.
_deliveries: dict[tuple[str, str, str], LocalDelivery] = {}


def _take(account: str, region: str, stream: str, records: list[bytes]) -> bool:
    """Hand the emulator's records to the stream's local delivery, if it has one."""
    delivery = _deliveries.get((account, region, stream))
    if delivery is None:
        return False
    delivery.accept(records)
    return True


class LocalDelivery:
    """Buffers one delivery stream's records and writes them to S3 the way Firehose does."""

    def __init__(
        self,
        aws: Aws,
        config: DeliveryConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.aws = aws
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._buffer: list[bytes] = []
        self._size = 0
        self._first_arrival: float | None = None
        # Lines (newline-terminated): what the archive counts, one per reading.
        self._lines = 0
        self.records_delivered = 0
        self.lines_delivered = 0
        self.objects: list[str] = []

    @classmethod
    def from_emulator(cls, aws: Aws, stream: str, **kwargs: Any) -> LocalDelivery:
        description = aws.call(
            "firehose",
            "describe_delivery_stream",
            resource=f"delivery stream {stream}",
            DeliveryStreamName=stream,
        )["DeliveryStreamDescription"]
        return cls(aws, DeliveryConfig.from_description(description), **kwargs)

    def install(self) -> Callable[[], None]:
        """Receive the emulator's records for this stream from now on; returns an uninstaller."""
        moto_patches.divert_firehose_delivery(_take)
        key = (self.aws.account_id, self.aws.region, self.config.stream)
        _deliveries[key] = self

        def uninstall() -> None:
            if _deliveries.get(key) is self:
                del _deliveries[key]

        return uninstall

    def accept(self, records: list[bytes]) -> None:
        with self._lock:
            if self._first_arrival is None:
                self._first_arrival = self.clock()
            self._buffer.extend(records)
            self._size += sum(len(r) for r in records)
            self._lines += sum(r.count(b"\n") for r in records)
            full = self._size >= self.config.buffer_bytes
        if full:
            self.flush()

    def due(self) -> bool:
        """True when the buffering interval of the oldest buffered record has passed."""
        with self._lock:
            first = self._first_arrival
        return first is not None and self.clock() - first >= self.config.buffer_seconds

    def flush_if_due(self) -> str | None:
        return self.flush() if self.due() else None

    def next_delivery_at(self) -> float | None:
        """When the buffer is written at the latest (epoch seconds); None when it is empty."""
        with self._lock:
            first = self._first_arrival
            return None if first is None else first + self.config.buffer_seconds

    def reconfigure(self, config: DeliveryConfig) -> None:
        """Deliver with `config` from now on (what UpdateDestination changed); the buffered
        records stay and go out under the new buffering hints and prefix."""
        with self._lock:
            self.config = config

    def flush(self) -> str | None:
        """Write the buffer as one object now; returns its key (None when empty)."""
        with self._lock:
            if not self._buffer:
                return None
            records, first, lines = self._buffer, self._first_arrival or self.clock(), self._lines
            self._buffer, self._size, self._first_arrival, self._lines = [], 0, None, 0
        arrival = datetime.fromtimestamp(first, UTC)
        config = self.config
        body = b"".join(records)
        if config.compression == "GZIP":
            body = gzip.compress(body)
        key = expand_prefix(config.prefix, arrival) + object_name(
            config.stream, config.version, arrival, config.compression
        )
        try:
            self.aws.call(
                "s3",
                "put_object",
                resource=f"bucket {config.bucket}",
                Bucket=config.bucket,
                Key=key,
                Body=body,
            )
        except BaseException:
            # Firehose keeps retrying a delivery it could not make; the records are not lost.
            with self._lock:
                self._buffer[:0] = records
                self._size += sum(len(r) for r in records)
                self._lines += lines
                self._first_arrival = first
            raise
        with self._lock:
            self.records_delivered += len(records)
            self.lines_delivered += lines
            self.objects.append(key)
        return key

    @property
    def buffered(self) -> int:
        with self._lock:
            return len(self._buffer)

    @property
    def buffered_lines(self) -> int:
        with self._lock:
            return self._lines
