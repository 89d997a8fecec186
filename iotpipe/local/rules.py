"""The IoT rules engine, locally: topic-filter matching, the rule's SELECT, its actions.

The emulator stores topic rules but never runs them. This engine reads the rules back from the
emulator (`GetTopicRule`), so it runs exactly what `up` created, and implements the subset of the
AWS IoT SQL those rules use; anything else is refused by name rather than guessed at:

- `SELECT` items: `*`, `topic()` / `topic(n)`, `timestamp()`, `clientid()`, each function with
  `AS alias`; `FROM '<topic filter>'` with MQTT wildcards `+` and `#`; no `WHERE`.
- substitution templates in action fields: `${topic()}`, `${topic(n)}`, `${timestamp()}`,
  `${newuuid()}`, `${clientid()}`.
- actions: `kinesis` (PutRecord) and `s3` (PutObject); the error action gets AWS's error message.

Basic Ingest: a message on `$aws/rules/<rule>/<topic>` goes to that rule only, and the rule sees
`<topic>` (the prefix is stripped before matching and before `topic(n)`).

A payload that is not a JSON object is forwarded unchanged: AWS passes `*` through as binary and
only adds selected fields to an empty or JSON payload. The processor then quarantines it.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iotpipe.errors import AwsError, UsageError

if TYPE_CHECKING:
    from iotpipe.aws import Aws

BASIC_INGEST_PREFIX = "$aws/rules/"
SUPPORTED_ACTIONS = ("kinesis", "s3")


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching: `+` is one level, a trailing `#` any number (even none)."""
    filter_levels = topic_filter.split("/")
    levels = topic.split("/")
    # Topics starting with $ are reserved: a leading wildcard does not match them (MQTT 4.7.2).
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for i, want in enumerate(filter_levels):
        if want == "#":
            return i == len(filter_levels) - 1
        if i >= len(levels):
            return False
        if want != "+" and want != levels[i]:
            return False
    return len(levels) == len(filter_levels)


def split_basic_ingest(topic: str) -> tuple[str | None, str]:
    """(rule name, topic the rule sees) for `$aws/rules/<rule>/<topic>`; (None, topic) otherwise."""
    if not topic.startswith(BASIC_INGEST_PREFIX):
        return None, topic
    rest = topic[len(BASIC_INGEST_PREFIX) :]
    rule, _, inner = rest.partition("/")
    return rule, inner


@dataclass(frozen=True)
class Message:
    """One published message as the rule sees it."""

    topic: str
    payload: bytes
    client_id: str
    received_at_ms: int

    def topic_level(self, n: int | None) -> str:
        """AWS's topic(n): 1-based level; topic() is the whole topic; out of range is undefined."""
        if n is None:
            return self.topic
        levels = self.topic.split("/")
        return levels[n - 1] if 1 <= n <= len(levels) else ""


@dataclass(frozen=True)
class Projection:
    function: str  # "*", "topic", "timestamp", "clientid"
    alias: str | None = None
    argument: int | None = None

    def value(self, message: Message) -> Any:
        if self.function == "topic":
            return message.topic_level(self.argument)
        if self.function == "timestamp":
            return message.received_at_ms
        return message.client_id


_SQL = re.compile(r"^\s*SELECT\s+(?P<items>.+?)\s+FROM\s+'(?P<filter>[^']+)'\s*(?P<rest>.*)$", re.I)
_ITEM = re.compile(
    r"^(?:(?P<star>\*)|(?P<fn>topic|timestamp|clientid)\(\s*(?P<arg>\d*)\s*\)\s+AS\s+(?P<alias>\w+))$",
    re.I,
)


@dataclass(frozen=True)
class RuleQuery:
    projections: tuple[Projection, ...]
    topic_filter: str

    @classmethod
    def parse(cls, sql: str, rule_name: str) -> RuleQuery:
        match = _SQL.match(sql)
        if not match:
            raise UsageError(
                f"rule {rule_name}: cannot run SQL {sql!r} locally",
                hint="the local rules engine supports SELECT <items> FROM '<topic filter>'",
            )
        if match["rest"].strip():
            raise UsageError(
                f"rule {rule_name}: {match['rest'].strip()!r} is not supported locally",
                hint="the local rules engine runs SELECT ... FROM '<filter>' without WHERE",
            )
        projections = []
        for raw in match["items"].split(","):
            item = _ITEM.match(raw.strip())
            if not item:
                raise UsageError(
                    f"rule {rule_name}: SELECT item {raw.strip()!r} is not supported locally",
                    hint="supported: *, topic(n) AS x, timestamp() AS x, clientid() AS x",
                )
            if item["star"]:
                projections.append(Projection("*"))
                continue
            function = item["fn"].lower()
            if item["arg"] and function != "topic":
                raise UsageError(f"rule {rule_name}: {function}() takes no argument")
            argument = int(item["arg"]) if item["arg"] else None
            projections.append(Projection(function, item["alias"], argument))
        return cls(tuple(projections), match["filter"])

    def select(self, message: Message) -> bytes:
        """The rule's outgoing payload for `message`."""
        added = {p.alias: p.value(message) for p in self.projections if p.function != "*"}
        keep_payload = any(p.function == "*" for p in self.projections)
        if not keep_payload:
            return json.dumps(added, separators=(",", ":")).encode()
        document = _json_object(message.payload)
        if document is None:
            # Not a JSON object: `*` passes the payload through as binary, with nothing added.
            return message.payload
        if not document.strip():
            return json.dumps(added, separators=(",", ":")).encode()
        parsed = json.loads(document)
        if not added:
            return message.payload
        if set(parsed) & set(added):
            return json.dumps({**parsed, **added}, separators=(",", ":")).encode()
        # Append the selected fields to the device's own text, so its numbers keep their literals.
        body = document.rstrip()[:-1].rstrip()
        extra = json.dumps(added, separators=(",", ":"))[1:-1]
        joiner = "," if parsed else ""
        return f"{body}{joiner}{extra}}}".encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(payload: bytes) -> str | None:
    """The payload as text when it is a JSON object (or empty), else None."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.strip():
        return text
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return None
    return text if isinstance(value, dict) else None


_TEMPLATE = re.compile(r"\$\{([^}]*)\}")
_TEMPLATE_FN = re.compile(r"^\s*(topic|timestamp|newuuid|clientid)\(\s*(\d*)\s*\)\s*$", re.I)


def substitute(template: str, message: Message, rule_name: str) -> str:
    """Expand `${...}` substitution templates in an action field."""

    def expand(match: re.Match[str]) -> str:
        expression = _TEMPLATE_FN.match(match[1])
        if not expression:
            raise UsageError(
                f"rule {rule_name}: substitution template ${{{match[1]}}} is not supported locally",
                hint="supported: topic(n), topic(), timestamp(), newuuid(), clientid()",
            )
        function, argument = expression[1].lower(), expression[2]
        if function == "topic":
            return message.topic_level(int(argument) if argument else None)
        if function == "timestamp":
            return str(message.received_at_ms)
        if function == "newuuid":
            return str(uuid.uuid4())
        return message.client_id

    return _TEMPLATE.sub(expand, template)


@dataclass
class TopicRule:
    name: str
    query: RuleQuery
    actions: list[dict[str, Any]]
    error_action: dict[str, Any] | None
    disabled: bool = False

    @classmethod
    def from_definition(cls, name: str, rule: dict[str, Any]) -> TopicRule:
        """Build from the `rule` of a GetTopicRule response."""
        actions = rule.get("actions") or []
        error_action = rule.get("errorAction") or None
        for action in [*actions, *([error_action] if error_action else [])]:
            kinds = [k for k, v in action.items() if v]
            unsupported = [k for k in kinds if k not in SUPPORTED_ACTIONS]
            if unsupported:
                raise UsageError(
                    f"rule {name}: action {unsupported[0]!r} is not supported locally",
                    hint="the local rules engine runs kinesis and s3 actions",
                )
        return cls(
            name=name,
            query=RuleQuery.parse(rule["sql"], name),
            actions=actions,
            error_action=error_action,
            disabled=bool(rule.get("ruleDisabled")),
        )


@dataclass
class PublishResult:
    rules: list[str] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0


class RuleEngine:
    """Runs every enabled rule whose topic filter matches a published message."""

    def __init__(
        self,
        aws: Aws,
        rules: list[TopicRule],
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.aws = aws
        self.rules = {rule.name: rule for rule in rules}
        self.clock_ms = clock_ms
        self.stats: Counter[str] = Counter()

    @classmethod
    def from_emulator(cls, aws: Aws, rule_names: list[str] | None = None) -> RuleEngine:
        """Load the rules as they are in the emulator (every rule, or the ones named)."""
        if rule_names is None:
            listed = aws.call("iot", "list_topic_rules", resource="IoT topic rules")
            rule_names = [r["ruleName"] for r in listed.get("rules", [])]
        rules = []
        for name in rule_names:
            found = aws.call(
                "iot",
                "get_topic_rule",
                resource=f"IoT rule {name}",
                missing=("ResourceNotFoundException", "UnauthorizedException"),
                ruleName=name,
            )
            if found is None:
                raise AwsError("not found", resource=f"IoT rule {name}", hint="run `iotpipe up`")
            rules.append(TopicRule.from_definition(name, found["rule"]))
        return cls(aws, rules)

    def publish(self, topic: str, payload: bytes, *, client_id: str = "") -> PublishResult:
        """Deliver one message as IoT Core's rules engine would."""
        self.stats["published"] += 1
        result = PublishResult()
        rule_name, rule_topic = split_basic_ingest(topic)
        if rule_name is not None:
            candidates = [self.rules[rule_name]] if rule_name in self.rules else []
        else:
            candidates = list(self.rules.values())
        message = Message(rule_topic, payload, client_id, self.clock_ms())
        for rule in candidates:
            if rule.disabled or not topic_matches(rule.query.topic_filter, rule_topic):
                continue
            result.rules.append(rule.name)
            outgoing = rule.query.select(message)
            for action in rule.actions:
                failure = self._run_action(rule, action, message, outgoing)
                if failure is None:
                    result.delivered += 1
                    self.stats["delivered"] += 1
                else:
                    result.failed += 1
                    self.stats["failed"] += 1
                    self._run_error_action(rule, message, failure)
        if not result.rules:
            self.stats["unmatched"] += 1
        return result

    def _run_action(
        self, rule: TopicRule, action: dict[str, Any], message: Message, outgoing: bytes
    ) -> dict[str, str] | None:
        """Run one action; on failure return AWS's failure entry for the error message."""
        try:
            if action.get("kinesis"):
                spec = action["kinesis"]
                params: dict[str, Any] = {
                    "StreamName": spec["streamName"],
                    "Data": outgoing,
                    # Without a partition key AWS picks a random one.
                    "PartitionKey": substitute(spec["partitionKey"], message, rule.name)
                    if spec.get("partitionKey")
                    else str(uuid.uuid4()),
                }
                self.aws.call(
                    "kinesis", "put_record", resource=f"stream {spec['streamName']}", **params
                )
                return None
            spec = action["s3"]
            self.aws.call(
                "s3",
                "put_object",
                resource=f"bucket {spec['bucketName']}",
                Bucket=spec["bucketName"],
                Key=substitute(spec["key"], message, rule.name),
                Body=outgoing,
            )
            return None
        except AwsError as exc:
            kind = "KinesisAction" if action.get("kinesis") else "S3Action"
            target = (action.get("kinesis") or {}).get("streamName") or action["s3"]["bucketName"]
            return {"failedAction": kind, "failedResource": target, "errorMessage": exc.message}

    def _run_error_action(self, rule: TopicRule, message: Message, failure: dict[str, str]) -> None:
        if not rule.error_action:
            self.stats["dropped"] += 1
            return
        # AWS's error action message: the original payload base64-encoded, and what failed.
        report = {
            "ruleName": rule.name,
            "topic": message.topic,
            "cloudwatchTraceId": str(uuid.uuid4()),
            "clientId": message.client_id,
            "base64OriginalPayload": base64.b64encode(message.payload).decode(),
            "failures": [failure],
        }
        body = json.dumps(report).encode()
        if self._run_action(rule, rule.error_action, message, body) is None:
            self.stats["error_action"] += 1
        else:
            self.stats["dropped"] += 1
