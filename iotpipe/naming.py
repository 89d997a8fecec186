"""Every resource name and ARN, derived from the stack name (and account/region) in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Names:
    stack: str
    app: str
    region: str
    account: str
    partition: str = "aws"

    # Underscored form for services that refuse hyphens (Glue, IoT rules).
    @property
    def snake(self) -> str:
        return self.stack.replace("-", "_")

    @property
    def archive_bucket(self) -> str:
        # Bucket names are global: account and region keep them unique and predictable.
        return f"{self.stack}-archive-{self.account}-{self.region}"

    @property
    def readings_stream(self) -> str:
        return f"{self.stack}-readings"

    @property
    def device_state_table(self) -> str:
        return f"{self.stack}-device-state"

    @property
    def alerts_topic(self) -> str:
        return f"{self.stack}-alerts"

    @property
    def processor_function(self) -> str:
        return f"{self.stack}-processor"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.stack}-processor-dlq"

    @property
    def archive_delivery_stream(self) -> str:
        return f"{self.stack}-archive"

    @property
    def timeseries_database(self) -> str:
        return self.stack

    @property
    def timeseries_table(self) -> str:
        return "readings"

    @property
    def glue_database(self) -> str:
        return self.snake

    @property
    def glue_table(self) -> str:
        return "readings"

    @property
    def crawler(self) -> str:
        return f"{self.stack}-archive-crawler"

    @property
    def workgroup(self) -> str:
        return self.stack

    @property
    def topic_rule(self) -> str:
        return f"{self.snake}_telemetry"

    @property
    def device_policy(self) -> str:
        return f"{self.stack}-device"

    @property
    def thing_type(self) -> str:
        return f"{self.stack}-sensor"

    @property
    def dashboard(self) -> str:
        return self.stack

    def role(self, service: str) -> str:
        """One role per service: iot-rule, processor, firehose, crawler."""
        return f"{self.stack}-{service}"

    def telemetry_topic(self, thing: str) -> str:
        """Where a device publishes its readings (AWS's topic design guidance:
        dt/<app>/<thing-name>/telemetry); "+" gives the filter every device's topic matches."""
        return f"dt/{self.app}/{thing}/telemetry"

    # The topic level that names the device (1-based, as the rule's topic(n) counts).
    thing_topic_level = 3

    # Key prefixes inside the archive bucket.
    archive_prefix = "readings/"
    archive_error_prefix = "firehose-errors/"
    quarantine_prefix = "quarantine/"
    iot_errors_prefix = "iot-errors/"
    athena_results_prefix = "athena-results/"

    def arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return ":".join(
            [
                "arn",
                self.partition,
                service,
                self.region if region else "",
                self.account if account else "",
                resource,
            ]
        )

    @property
    def archive_bucket_arn(self) -> str:
        return f"arn:{self.partition}:s3:::{self.archive_bucket}"

    @property
    def readings_stream_arn(self) -> str:
        return self.arn("kinesis", f"stream/{self.readings_stream}")

    @property
    def device_state_table_arn(self) -> str:
        return self.arn("dynamodb", f"table/{self.device_state_table}")

    @property
    def alerts_topic_arn(self) -> str:
        return self.arn("sns", self.alerts_topic)

    def role_arn(self, service: str) -> str:
        return self.arn("iam", f"role/{self.role(service)}", region=False)

    @property
    def dead_letter_queue_arn(self) -> str:
        return self.arn("sqs", self.dead_letter_queue)

    @property
    def topic_rule_arn(self) -> str:
        return self.arn("iot", f"rule/{self.topic_rule}")

    @property
    def processor_function_arn(self) -> str:
        return self.arn("lambda", f"function:{self.processor_function}")

    @property
    def processor_log_group(self) -> str:
        return f"/aws/lambda/{self.processor_function}"

    @property
    def archive_delivery_stream_arn(self) -> str:
        return self.arn("firehose", f"deliverystream/{self.archive_delivery_stream}")

    @property
    def archive_log_group(self) -> str:
        return f"/aws/kinesisfirehose/{self.archive_delivery_stream}"

    @property
    def glue_catalog_arn(self) -> str:
        return self.arn("glue", "catalog")

    @property
    def glue_database_arn(self) -> str:
        return self.arn("glue", f"database/{self.glue_database}")

    @property
    def glue_table_arn(self) -> str:
        return self.arn("glue", f"table/{self.glue_database}/{self.glue_table}")

    @property
    def crawler_arn(self) -> str:
        return self.arn("glue", f"crawler/{self.crawler}")

    @property
    def workgroup_arn(self) -> str:
        return self.arn("athena", f"workgroup/{self.workgroup}")

    @property
    def timeseries_database_arn(self) -> str:
        return self.arn("timestream", f"database/{self.timeseries_database}")

    @property
    def timeseries_table_arn(self) -> str:
        return f"{self.timeseries_database_arn}/table/{self.timeseries_table}"
