"""Lambda function states: Pending after a create, InProgress after an update, and the refusals
AWS answers meanwhile; `up` waits for the settled state instead of running into them."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from iotpipe.aws import add_client_hook
from iotpipe.local.aws_rules import lambda_ as rules
from tests.support import client, write_config

ACCOUNT = "123456789012"
REGION = "us-east-1"
FUNCTION = "test-processor"


def _zip(body: str = "def handler(event, context):\n    return 1\n") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("fn.py", body)
    return buffer.getvalue()


def _create_function(endpoint: str, aws_clock: Any) -> dict[str, Any]:
    role = client(endpoint, "iam").create_role(
        RoleName="fn",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "lambda.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            }
        ),
    )["Role"]["Arn"]
    lam = client(endpoint, "lambda")
    for _ in range(20):
        try:
            return lam.create_function(
                FunctionName=FUNCTION,
                Runtime="python3.11",
                Role=role,
                Handler="fn.handler",
                Code={"ZipFile": _zip()},
            )
        except ClientError as exc:
            # A role this new is not yet assumable by Lambda on AWS (nor on the emulator).
            if "cannot be assumed" not in exc.response["Error"]["Message"]:
                raise
            aws_clock.advance(10)
    raise AssertionError("the role never became assumable")


@pytest.fixture
def slow_lambda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creations and updates that take long enough for the test to act while they run."""
    monkeypatch.setattr(rules, "PENDING_SECONDS", 600.0, raising=False)
    monkeypatch.setattr(rules, "UPDATE_SECONDS", 600.0, raising=False)


def _conflict(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == "ResourceConflictException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    return error["Message"]


def test_a_new_function_is_pending_and_refuses_changes_until_active(
    endpoint, aws_clock, slow_lambda
) -> None:
    lam = client(endpoint, "lambda")
    created = _create_function(endpoint, aws_clock)
    assert (created["State"], created["StateReasonCode"]) == ("Pending", "Creating")
    conf = lam.get_function_configuration(FunctionName=FUNCTION)
    assert (conf["State"], conf["LastUpdateStatus"]) == ("Pending", "InProgress")
    assert lam.get_function(FunctionName=FUNCTION)["Configuration"]["State"] == "Pending"

    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION}"
    message = _conflict(lambda: lam.update_function_configuration(FunctionName=arn, Timeout=9))
    assert message == (
        "The operation cannot be performed at this time. The resource "
        f"{arn} is currently in the following state: 'Pending'. StateReasonCode: 'Creating'"
    )
    _conflict(lambda: lam.update_function_code(FunctionName=FUNCTION, ZipFile=_zip()))
    _conflict(lambda: lam.publish_version(FunctionName=FUNCTION))

    aws_clock.advance(600)
    conf = lam.get_function_configuration(FunctionName=FUNCTION)
    assert (conf["State"], conf["LastUpdateStatus"]) == ("Active", "Successful")
    assert lam.update_function_configuration(FunctionName=FUNCTION, Timeout=9)["Timeout"] == 9


def test_an_update_is_in_progress_and_refuses_further_updates_until_done(
    endpoint, aws_clock, slow_lambda
) -> None:
    lam = client(endpoint, "lambda")
    _create_function(endpoint, aws_clock)
    aws_clock.advance(600)
    updated = lam.update_function_code(FunctionName=FUNCTION, ZipFile=_zip("x = 1\n"))
    assert (updated["State"], updated["LastUpdateStatus"]) == ("Active", "InProgress")
    conf = lam.get_function_configuration(FunctionName=FUNCTION)
    assert (conf["State"], conf["LastUpdateStatus"]) == ("Active", "InProgress")

    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{FUNCTION}"
    message = _conflict(lambda: lam.update_function_configuration(FunctionName=FUNCTION, Timeout=7))
    assert message == (
        f"The operation cannot be performed at this time. An update is in progress for resource: "
        f"{arn}"
    )
    _conflict(lambda: lam.update_function_code(FunctionName=FUNCTION, ZipFile=_zip()))

    aws_clock.advance(600)
    assert lam.get_function(FunctionName=FUNCTION)["Configuration"]["LastUpdateStatus"] == (
        "Successful"
    )
    assert lam.update_function_configuration(FunctionName=FUNCTION, Timeout=7)["Timeout"] == 7


# --- `up` against the rule -----------------------------------------------------------------------


@pytest.fixture
def lambda_answers() -> Iterator[list[tuple[str, str]]]:
    """(operation, State or error code) of every Lambda answer the code under test receives."""
    seen: list[tuple[str, str]] = []

    def record(http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        error = parsed.get("Error", {}).get("Code")
        conf = parsed.get("Configuration", parsed)
        seen.append((model.name, error or f"{conf.get('State')}/{conf.get('LastUpdateStatus')}"))

    def attach(service: str, lambda_client: Any) -> None:
        if service == "lambda":
            lambda_client.meta.events.register("after-call.lambda", record)

    remove = add_client_hook(attach)
    yield seen
    remove()


def _up(cli, config=None) -> None:
    result = cli("up", "--yes", config=config)
    assert result.exit_code == 0, result


def test_up_waits_for_the_new_function_to_be_active(cli, processor_source, lambda_answers) -> None:
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    # The pause is explained on the progress line.
    assert "Lambda is still creating the function (State Pending" in result.stderr
    answers = set(lambda_answers)
    # The code saw the function Pending, waited for it, and never ran into a refusal.
    assert ("CreateFunction", "Pending/None") in answers
    assert ("GetFunction", "Active/Successful") in answers
    assert not [a for a in lambda_answers if a[1] == "ResourceConflictException"]


def test_up_changing_code_and_configuration_waits_between_updates(
    cli, processor_source, lambda_answers, endpoint, tmp_path
) -> None:
    _up(cli)
    lambda_answers.clear()
    (processor_source / "handler.py").write_text("def lambda_handler(event, context):\n    pass\n")
    config = write_config(tmp_path / "changed.toml", processor={"memory_mb": 512})
    _up(cli, config)

    operations = [op for op, _ in lambda_answers]
    assert operations.index("UpdateFunctionCode") < operations.index("UpdateFunctionConfiguration")
    # Between the two updates the code waited for the first to finish.
    between = lambda_answers[
        operations.index("UpdateFunctionCode") + 1 : operations.index("UpdateFunctionConfiguration")
    ]
    assert ("GetFunction", "Active/Successful") in between
    assert not [a for a in lambda_answers if a[1] == "ResourceConflictException"]
    conf = client(endpoint, "lambda").get_function_configuration(FunctionName=FUNCTION)
    assert conf["MemorySize"] == 512
