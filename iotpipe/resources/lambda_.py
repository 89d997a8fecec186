"""Lambda: the processor function, its role and log group, and its Kinesis event source mapping.

The code is zipped reproducibly (iotpipe.packaging), so the function's CodeSha256 tells whether the
source changed: unchanged source means no upload. Lambda applies every change asynchronously, so
each step waits for the function to be Active with its last update Successful before the next.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from iotpipe.aws import IAM_PROPAGATION, UPDATE_IN_PROGRESS
from iotpipe.engine.fields import REPLACE, Field, Settled, State, Tagging, Write, call
from iotpipe.engine.model import Resource
from iotpipe.errors import AwsError, ConfigError
from iotpipe.packaging import CodeBundle, processor_bundle, processor_module
from iotpipe.permissions import Grant, lifecycle, reads, writes
from iotpipe.resources.iam import ServiceRole, allow, policy_document, trust_policy
from iotpipe.resources.logs import LogGroup
from iotpipe.resources.timestream import MAGNETIC_STORE_WRITES

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

RUNTIME = "python3.11"
HANDLER = "processor.handler.lambda_handler"
# AWS publishes Powertools for AWS Lambda (Python) as a public layer from this account.
POWERTOOLS_ACCOUNT = "017000801446"

# Settings UpdateFunctionConfiguration changes, by our field name and Lambda's parameter name.
_CONFIG_PARAMS = {
    "runtime": "Runtime",
    "handler": "Handler",
    "role": "Role",
    "memory_mb": "MemorySize",
    "timeout_seconds": "Timeout",
    "layers": "Layers",
    "description": "Description",
    "environment": "Environment",
}


def powertools_layer_arn(ctx: StackContext) -> str:
    processor, names = ctx.config.processor, ctx.names
    return (
        f"arn:{names.partition}:lambda:{names.region}:{POWERTOOLS_ACCOUNT}:layer:"
        f"AWSLambdaPowertoolsPythonV3-python311-{processor.architecture}:"
        f"{processor.powertools_layer_version}"
    )


# Where Powertools lists the layer versions it publishes, per region and architecture.
POWERTOOLS_LAYERS_URL = (
    "https://docs.powertools.aws.dev/lambda/python/latest/getting-started/install/#lambda-layer"
)
_LAYER_FIELD = "[processor] powertools_layer_version"
# Probes of other versions when the configured one is missing: enough to find the newest of a
# few hundred versions by doubling, then halving.
_MAX_PROBES = 16


def _layer_unreadable(exc: AwsError) -> bool:
    """AWS's answer for a version of another account's layer that does not exist (or that the
    caller may not use): AccessDeniedException "... because no resource-based policy allows the
    lambda:GetLayerVersion action" (older answers give no reason); ResourceNotFoundException for
    a layer of the caller's own. A denial by the caller's own policies (identity-based, a
    permissions boundary, a service control policy) names that instead."""
    if exc.code == "ResourceNotFoundException":
        return True
    text = str(exc)
    return exc.code == "AccessDeniedException" and (
        "resource-based policy" in text or " because " not in text
    )


def _layer_exists(aws: Aws, arn: str) -> bool:
    try:
        aws.call("lambda", "get_layer_version_by_arn", resource=f"layer {arn}", Arn=arn)
    except AwsError as exc:
        if _layer_unreadable(exc):
            return False
        raise
    return True


def newest_layer_version(aws: Aws, layer_arn: str, known: int) -> int | None:
    """The newest version of `layer_arn` (no version suffix) in this region, or None for none.

    AWS lists only the caller's own layers' versions (ListLayerVersions needs a permission that
    Powertools does not grant), so this probes GetLayerVersionByArn: upward by doubling from
    `known` while versions exist, else downward by halving; versions are numbered 1, 2, 3, ...
    """
    probes = 0

    def exists(version: int) -> bool:
        nonlocal probes
        probes += 1
        return _layer_exists(aws, f"{layer_arn}:{version}")

    if exists(known):
        low, step = known, 1
        while probes < _MAX_PROBES and exists(low + step):
            low, step = low + step, step * 2
        high = low + step
    else:
        low, high = 0, known
    while high - low > 1 and probes < _MAX_PROBES:
        middle = (low + high) // 2
        if exists(middle):
            low = middle
        else:
            high = middle
    return low or None


def check_powertools_layer(ctx: StackContext, aws: Aws) -> None:
    """Confirm the configured Powertools layer version exists in this region, before planning.

    Lambda would refuse CreateFunction or UpdateFunctionConfiguration much later, after the
    rest of the stack was built; this says so before anything changes, with what to set.
    """
    arn = powertools_layer_arn(ctx)
    layer, _, configured = arn.rpartition(":")
    resource = f"layer {arn}"
    try:
        aws.call("lambda", "get_layer_version_by_arn", resource=resource, Arn=arn)
        return
    except AwsError as exc:
        if not _layer_unreadable(exc):
            if exc.code == "AccessDeniedException":
                raise AwsError(
                    exc.message,
                    code=exc.code,
                    hint="the AWS identity running iotpipe needs lambda:GetLayerVersion on "
                    f"{layer}; `iotpipe iam-policy` prints a policy that allows it",
                ) from exc
            raise
    from iotpipe.config import ProcessorSection

    default = int(ProcessorSection.model_fields["powertools_layer_version"].default)
    newest = newest_layer_version(aws, layer, default)
    name = layer.rsplit(":", 1)[-1]
    region = ctx.names.region
    if newest is None:
        raise AwsError(
            f"no version of AWS's layer {name} can be read in {region}",
            resource=resource,
            hint="the identity running iotpipe needs lambda:GetLayerVersion on it "
            f"(`iotpipe iam-policy`); Powertools lists its regions at {POWERTOOLS_LAYERS_URL}",
        )
    raise ConfigError(
        f"{_LAYER_FIELD} = {configured}: AWS publishes no version {configured} of layer {name} "
        f"in {region}; the newest there is {newest}",
        hint=f"set {_LAYER_FIELD} = {newest} (versions by region: {POWERTOOLS_LAYERS_URL})",
    )


def processor_environment(ctx: StackContext) -> dict[str, str]:
    """The function's environment: the processor's Settings (lambda_src/processor/settings.py,
    the one statement of that contract) and what Powertools reads."""
    config, names = ctx.config, ctx.names
    timeseries = ctx.timeseries_active
    settings = processor_module("settings").Settings(
        stack_name=ctx.stack,
        device_state_table=names.device_state_table,
        device_state_ttl_days=config.device_state.ttl_days,
        timeseries_database=names.timeseries_database if timeseries else "",
        timeseries_table=names.timeseries_table if timeseries else "",
        timeseries_memory_retention_hours=config.timeseries.memory_retention_hours,
        # The time-series sink sends what the table takes: with magnetic-store writes, readings
        # up to the magnetic retention old.
        timeseries_magnetic_writes=MAGNETIC_STORE_WRITES,
        timeseries_magnetic_retention_days=config.timeseries.magnetic_retention_days,
        archive_delivery_stream=names.archive_delivery_stream,
        archive_bucket=names.archive_bucket,
        quarantine_prefix=names.quarantine_prefix,
        # The custom metrics to emit, each billed monthly: only those the config lists.
        custom_metrics=tuple(config.processor.custom_metrics),
    )
    return {
        **settings.to_environment(),
        "POWERTOOLS_SERVICE_NAME": "iotpipe-processor",
        "POWERTOOLS_METRICS_NAMESPACE": "iotpipe",
        "LOG_LEVEL": config.processor.log_level,
    }


def processor_role(ctx: StackContext) -> ServiceRole:
    names = ctx.names
    log_group_arn = names.arn("logs", f"log-group:{names.processor_log_group}")
    statements = [
        allow(
            [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetRecords",
                "kinesis:GetShardIterator",
                "kinesis:ListShards",
            ],
            [names.readings_stream_arn],
            "ReadReadings",
        ),
        # kinesis:ListStreams has no resource-level permission: AWS accepts only "*".
        allow(["kinesis:ListStreams"], ["*"], "ListStreams"),
        # The processor writes each device's newest reading with a PartiQL UPDATE conditioned on
        # the stored ts, and INSERTs a device's first state (BatchExecuteStatement authorizes each
        # statement by its verb), nothing else (see docs/PROCESSOR.md).
        allow(
            ["dynamodb:PartiQLInsert", "dynamodb:PartiQLUpdate"],
            [names.device_state_table_arn],
            "WriteDeviceState",
        ),
        allow(
            ["firehose:PutRecordBatch"],
            [names.arn("firehose", f"deliverystream/{names.archive_delivery_stream}")],
            "ArchiveReadings",
        ),
        allow(
            ["s3:PutObject"],
            [f"{names.archive_bucket_arn}/{names.quarantine_prefix}*"],
            "QuarantineInvalidReadings",
        ),
        allow(["sqs:SendMessage"], [names.dead_letter_queue_arn], "DeadLetterFailedBatches"),
        allow(
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [f"{log_group_arn}:*"],
            "WriteOwnLogs",
        ),
    ]
    if ctx.timeseries_active:
        table = f"database/{names.timeseries_database}/table/{names.timeseries_table}"
        statements += [
            allow(["timestream:WriteRecords"], [names.arn("timestream", table)], "WriteTimeseries"),
            # timestream:DescribeEndpoints has no resource-level permission: AWS accepts only "*".
            allow(["timestream:DescribeEndpoints"], ["*"], "FindTimeseriesEndpoint"),
        ]
    return ServiceRole(
        ctx,
        names.role("processor"),
        trust=trust_policy("lambda.amazonaws.com", names.account),
        policy=policy_document(*statements),
        description="Lets the processor read readings and write them to the pipeline's sinks",
    )


def _tags_for(ctx: StackContext) -> dict[str, str]:
    return dict(ctx.tags)


def _lambda_tagging(arn: str) -> Tagging:
    """Lambda's tagging of a function or a mapping, by the ARN found under `arn` in its answer."""
    return Tagging(
        "lambda", "list_tags", "tag_resource", lambda r, raw: {"Resource": raw[arn]}, shape="map"
    )


def _changed(r: Resource, want: dict[str, Any], have: State, params: dict[str, str]) -> list[str]:
    """The fields among `params` whose desired value differs from the latest observed one:
    an update call names only those."""
    return [name for name in params if r.field(name).differs(have[name], want[name])]


def _configuration(r: ProcessorFunction, aws: Aws, want: dict[str, Any], have: State) -> None:
    params = {_CONFIG_PARAMS[name]: want[name] for name in _changed(r, want, have, _CONFIG_PARAMS)}
    if "Environment" in params:
        params["Environment"] = {"Variables": params["Environment"]}
    if not params:
        return
    try:
        r.call(
            aws,
            "update_function_configuration",
            # A new role may not be assumable yet; an earlier change may still be applying.
            retry_on=(*UPDATE_IN_PROGRESS, *IAM_PROPAGATION),
            FunctionName=r.name,
            **params,
        )
    except AwsError as exc:
        raise _explain_layer_error(exc, want["layers"]) from exc


def _lambda_state(raw: dict[str, Any]) -> tuple[str, str]:
    conf = raw["Configuration"]
    return conf.get("State", "Active"), conf.get("LastUpdateStatus", "Successful")


def _function_waiting(raw: dict[str, Any]) -> str:
    """Lambda refuses the next change while it applies one (ResourceConflictException): the step
    says why it pauses rather than run into the refusal."""
    state, update = _lambda_state(raw)
    doing = "creating the function" if state == "Pending" else "applying the update"
    return f"Lambda is still {doing} (State {state}, last update {update})"


def _function_failure(raw: dict[str, Any]) -> str | None:
    state, update = _lambda_state(raw)
    if "Failed" not in (state, update):
        return None
    conf = raw["Configuration"]
    reason = conf.get("StateReason") or conf.get("LastUpdateStatusReason") or ""
    return f"the function is {state}, last update {update}: {reason}"


class ProcessorFunction(Resource):
    kind = "lambda.function"
    absent = ("ResourceNotFoundException",)
    fields = (
        Field("description", "Configuration.Description || ''", "configuration"),
        Field("runtime", "Configuration.Runtime", "configuration"),
        Field("handler", "Configuration.Handler", "configuration"),
        # Lambda changes the instruction set only together with the code.
        Field("architecture", "Configuration.Architectures[0] || 'x86_64'", "update_function_code"),
        Field("memory_mb", "Configuration.MemorySize", "configuration"),
        Field("timeout_seconds", "Configuration.Timeout", "configuration"),
        Field("role", "Configuration.Role", "configuration"),
        Field("layers", "Configuration.Layers[].Arn || `[]`", "configuration"),
        Field("environment", "Configuration.Environment.Variables || `{}`", "configuration"),
        Field("code_sha256", "Configuration.CodeSha256", "update_function_code"),
    )
    # Lambda applies each update asynchronously: the next waits until the function is settled.
    writes = (
        call(
            "lambda",
            "update_function_code",
            lambda r, want, have: {
                "FunctionName": r.name,
                "ZipFile": r.bundle.zip_bytes,
                "Architectures": [want["architecture"]],
                "Publish": False,
            },
            settles=True,
            retry_on=UPDATE_IN_PROGRESS,
        ),
        Write("configuration", _configuration, settles=True),
    )
    # GetFunction's answer carries the function's tags.
    tagging = Tagging(
        "lambda",
        None,
        "tag_resource",
        lambda r, raw: {"Resource": raw["Configuration"]["FunctionArn"]},
        shape="map",
    )
    settled = Settled(
        lambda raw: "/".join(_lambda_state(raw)),
        frozenset({"Active/Successful"}),
        "for the function to be Active and settled",
        failed=_function_failure,
        waiting=_function_waiting,
    )

    @cached_property
    def bundle(self) -> CodeBundle:
        return processor_bundle()

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        arn = names.arn("lambda", f"function:{self.name}")
        # The plan's GetLayerVersionByArn check (and its search for the newest version when the
        # configured one is gone), and CreateFunction/UpdateFunctionConfiguration naming the
        # layer, are authorized as lambda:GetLayerVersion on the layer version.
        layer = names.arn("lambda", "layer:AWSLambdaPowertoolsPythonV3-python311-*")
        layer = layer.replace(f":{names.account}:", f":{POWERTOOLS_ACCOUNT}:")
        return [
            *lifecycle(
                arn,
                self.ctx.stack,
                read=["lambda:GetFunction"],
                write=[
                    "lambda:CreateFunction",
                    "lambda:UpdateFunctionCode",
                    "lambda:UpdateFunctionConfiguration",
                    "lambda:TagResource",
                ],
                delete=["lambda:DeleteFunction"],
            ),
            reads(
                ["lambda:GetLayerVersion"],
                layer,
                why="Powertools' own layer versions",
                preflight=True,
            ),
        ]

    def desired(self) -> dict[str, Any]:
        processor = self.ctx.config.processor
        return {
            "tags": _tags_for(self.ctx),
            "description": f"iotpipe processor of stack {self.ctx.stack}",
            "runtime": RUNTIME,
            "handler": HANDLER,
            "architecture": processor.architecture,
            "memory_mb": processor.memory_mb,
            "timeout_seconds": processor.timeout_seconds,
            "role": self.ctx.names.role_arn("processor"),
            "layers": [powertools_layer_arn(self.ctx)],
            "environment": processor_environment(self.ctx),
            "code_sha256": self.bundle.sha256,
        }

    def preflight(self, aws: Aws) -> None:
        check_powertools_layer(self.ctx, aws)

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        # The configuration (with the State the function must settle in between updates) and
        # the tags, in one answer.
        return self.find(aws, "get_function", FunctionName=self.name)

    def create(self, aws: Aws) -> None:
        want = self.desired()
        try:
            self.call(
                aws,
                "create_function",
                # A role created seconds ago is not yet assumable by Lambda.
                retry_on=IAM_PROPAGATION,
                FunctionName=self.name,
                Runtime=want["runtime"],
                Handler=want["handler"],
                Role=want["role"],
                Code={"ZipFile": self.bundle.zip_bytes},
                Description=want["description"],
                Architectures=[want["architecture"]],
                MemorySize=want["memory_mb"],
                Timeout=want["timeout_seconds"],
                Layers=want["layers"],
                Environment={"Variables": want["environment"]},
                Tags=want["tags"],
                Publish=False,
            )
        except AwsError as exc:
            raise _explain_layer_error(exc, want["layers"]) from exc

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_function", FunctionName=self.name)


def _explain_layer_error(exc: AwsError, layers: list[str]) -> AwsError:
    """Name the layer and the setting to fix when Lambda cannot find the Powertools layer.

    The plan checked the layer already; this covers a version withdrawn since. Lambda answers
    a missing version of another account's layer with AccessDeniedException on
    lambda:GetLayerVersion, one of the caller's own with ResourceNotFoundException.
    """
    text = str(exc).lower()
    if "layer" not in text or not _layer_unreadable(exc):
        return exc
    return AwsError(
        f"{exc.message} (layer {', '.join(layers)})",
        code=exc.code,
        hint=f"check {_LAYER_FIELD} against the versions AWS publishes for this region and "
        f"architecture ({POWERTOOLS_LAYERS_URL})",
    )


# The states of a mapping that takes a change (the others: Creating, Updating, Enabling,
# Disabling; a Deleting one is as good as gone).
_MAPPING_SETTLED = frozenset({"Enabled", "Disabled"})


# Our field name -> Create/UpdateEventSourceMapping parameter.
_MAPPING_PARAMS = {
    "batch_size": "BatchSize",
    "batching_window_seconds": "MaximumBatchingWindowInSeconds",
    "bisect_on_error": "BisectBatchOnFunctionError",
    "maximum_retry_attempts": "MaximumRetryAttempts",
    "maximum_record_age_seconds": "MaximumRecordAgeInSeconds",
    "parallelization_factor": "ParallelizationFactor",
    "function_response_types": "FunctionResponseTypes",
    "on_failure_destination": "DestinationConfig",
    "enabled": "Enabled",
}


def _mapping_params(want: dict[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """Create/UpdateEventSourceMapping's parameters for these fields."""
    params = {_MAPPING_PARAMS[name]: want[name] for name in fields}
    if "DestinationConfig" in params:
        params["DestinationConfig"] = {"OnFailure": {"Destination": params["DestinationConfig"]}}
    return params


class ReadingsTrigger(Resource):
    """The event source mapping from the readings stream to the processor.

    AWS identifies it by a generated UUID; iotpipe identifies it by (function, stream), of which
    there is exactly one.
    """

    kind = "lambda.event-source-mapping"
    absent = ("ResourceNotFoundException",)
    fields = (
        Field("enabled", lambda raw: raw.get("State") not in ("Disabled", "Disabling"), "update"),
        Field("batch_size", "BatchSize", "update"),
        Field("batching_window_seconds", "MaximumBatchingWindowInSeconds || `0`", "update"),
        # AWS cannot move an existing mapping's starting position.
        Field("starting_position", "StartingPosition", REPLACE),
        Field("bisect_on_error", "BisectBatchOnFunctionError || `false`", "update"),
        Field("maximum_retry_attempts", "MaximumRetryAttempts || `-1`", "update"),
        Field("maximum_record_age_seconds", "MaximumRecordAgeInSeconds || `-1`", "update"),
        Field("parallelization_factor", "ParallelizationFactor || `1`", "update"),
        Field("function_response_types", "FunctionResponseTypes || `[]`", "update"),
        Field("on_failure_destination", "DestinationConfig.OnFailure.Destination", "update"),
    )
    writes = (
        call(
            "lambda",
            "update_event_source_mapping",
            lambda r, want, have: {
                "UUID": have.raw["UUID"],
                **_mapping_params(want, _changed(r, want, have, _MAPPING_PARAMS)),
            },
            name="update",
            settles=True,
            retry_on=UPDATE_IN_PROGRESS,
        ),
    )
    tagging = _lambda_tagging("EventSourceMappingArn")
    settled = Settled("State", _MAPPING_SETTLED, "for the mapping to settle")

    @property
    def function(self) -> str:
        return self.ctx.names.processor_function

    @property
    def stream_arn(self) -> str:
        return self.ctx.names.readings_stream_arn

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        function = names.arn("lambda", f"function:{names.processor_function}")
        # Mappings have random ids: they are scoped by the function they feed instead.
        mappings = names.arn("lambda", "event-source-mapping:*")
        why = "event source mappings have random ids; lambda:FunctionArn scopes them"
        feeds = {"ArnLike": {"lambda:FunctionArn": function}}
        return [
            reads(
                ["lambda:ListEventSourceMappings"],
                "*",
                why="IAM has no resource type for lambda:ListEventSourceMappings",
            ),
            # Lambda's tagging actions know no function condition: a mapping's tags are tags only.
            reads(["lambda:ListTags"], mappings, why=why),
            writes(["lambda:TagResource"], mappings, why=why),
            writes(
                ["lambda:CreateEventSourceMapping"],
                "*",
                condition=feeds,
                why="IAM has no resource type for lambda:CreateEventSourceMapping",
            ),
            writes(
                ["lambda:UpdateEventSourceMapping", "lambda:DeleteEventSourceMapping"],
                mappings,
                condition=feeds,
                why=why,
            ),
        ]

    def desired(self) -> dict[str, Any]:
        processor = self.ctx.config.processor
        return {
            "tags": _tags_for(self.ctx),
            "enabled": True,
            "batch_size": processor.batch_size,
            "batching_window_seconds": processor.batching_window_seconds,
            "starting_position": processor.starting_position,
            "bisect_on_error": processor.bisect_on_error,
            "maximum_retry_attempts": processor.maximum_retry_attempts,
            "maximum_record_age_seconds": processor.maximum_record_age_seconds,
            "parallelization_factor": processor.parallelization_factor,
            # The handler reports which records failed, so only those are retried.
            "function_response_types": ["ReportBatchItemFailures"],
            "on_failure_destination": self.ctx.names.dead_letter_queue_arn,
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        mappings = aws.paginate(
            "lambda",
            "list_event_source_mappings",
            resource=self.label,
            key="EventSourceMappings",
            FunctionName=self.function,
            EventSourceArn=self.stream_arn,
        )
        return next((m for m in mappings if m.get("State") != "Deleting"), None)

    def create(self, aws: Aws) -> None:
        want = self.desired()
        self.call(
            aws,
            "create_event_source_mapping",
            # The function's role may not yet be usable to read the stream; the function itself
            # may still be settling.
            retry_on=(*IAM_PROPAGATION, *UPDATE_IN_PROGRESS),
            FunctionName=self.function,
            EventSourceArn=self.stream_arn,
            StartingPosition=want["starting_position"],
            Tags=want["tags"],
            **_mapping_params(want, _MAPPING_PARAMS),
        )

    def delete(self, aws: Aws) -> None:
        found = self.observe(aws)
        if found is None:
            return
        self.remove(
            aws, "delete_event_source_mapping", retry_on=UPDATE_IN_PROGRESS, UUID=found["UUID"]
        )
        # AWS allows one mapping per (function, stream): a replacement waits for this one to go.
        aws.wait_for(
            lambda: self.observe(aws) is None or None,
            resource=self.label,
            what="for the mapping to be deleted",
        )


def resources(ctx: StackContext) -> list[Resource]:
    names = ctx.names
    role = processor_role(ctx)
    log_group = LogGroup(
        ctx, names.processor_log_group, retention_days=ctx.config.processor.log_retention_days
    )
    function = ProcessorFunction(
        ctx, names.processor_function, depends_on=(role.key, log_group.key)
    )
    trigger = ReadingsTrigger(
        ctx,
        f"{names.readings_stream}->{names.processor_function}",
        depends_on=(
            function.key,
            f"kinesis.stream/{names.readings_stream}",
            f"sqs.queue/{names.dead_letter_queue}",
        ),
    )
    return [role, log_group, function, trigger]
