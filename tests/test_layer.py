"""The Powertools layer: `plan` and `up` confirm the configured version exists in the region before
anything changes, and name the newest one when it does not; the emulator answers as AWS does."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from iotpipe.config import ProcessorSection
from iotpipe.local.aws_rules.lambda_ import POWERTOOLS_LATEST_VERSION
from tests.support import REGION, client, write_config

LAYER = f"arn:aws:lambda:{REGION}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-arm64"
FIELD = "[processor] powertools_layer_version"

pytestmark = pytest.mark.usefixtures("processor_source")


def test_the_default_is_the_newest_version_powertools_documents() -> None:
    default = ProcessorSection.model_fields["powertools_layer_version"].default
    assert default == POWERTOOLS_LATEST_VERSION


def test_the_emulator_answers_published_versions_and_refuses_others_as_aws_does(endpoint) -> None:
    lam = client(endpoint, "lambda")
    found = lam.get_layer_version_by_arn(Arn=f"{LAYER}:{POWERTOOLS_LATEST_VERSION}")
    assert found["Version"] == POWERTOOLS_LATEST_VERSION
    assert found["CompatibleArchitectures"] == ["arm64"]
    missing = f"{LAYER}:{POWERTOOLS_LATEST_VERSION + 1}"
    with pytest.raises(ClientError) as caught:
        lam.get_layer_version_by_arn(Arn=missing)
    error = caught.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    assert error["Message"] == (
        f"User: arn:aws:iam::123456789012:root is not authorized to perform: "
        f"lambda:GetLayerVersion on resource: {missing} because no resource-based policy allows "
        "the lambda:GetLayerVersion action"
    )
    # Lambda refuses a function naming that version the same way.
    with pytest.raises(ClientError) as caught:
        lam.create_function(
            FunctionName="f",
            Runtime="python3.11",
            Role="arn:aws:iam::123456789012:role/r",
            Handler="h.h",
            Code={"ZipFile": b"PK\x05\x06" + b"\0" * 18},
            Layers=[missing],
        )
    assert caught.value.response["Error"]["Code"] == "AccessDeniedException"


def test_plan_confirms_the_configured_version_once(cli, faults) -> None:
    result = cli("plan")
    assert result.exit_code == 0, result
    assert faults.calls.count(("lambda", "GetLayerVersionByArn")) == 1


def test_a_version_missing_in_the_region_is_refused_before_any_change(
    cli, faults, tmp_path
) -> None:
    config = write_config(tmp_path / "old.toml", processor={"powertools_layer_version": 99})
    for command in (("plan",), ("up", "--yes")):
        result = cli(*command, config=config)
        assert result.exit_code == 2, result
        assert f"{FIELD} = 99" in result.stderr
        assert f"newest there is {POWERTOOLS_LATEST_VERSION}" in result.stderr
        assert f"set {FIELD} = {POWERTOOLS_LATEST_VERSION}" in result.stderr
        assert "Traceback" not in result.stderr
    assert faults.mutating_calls == []


def test_an_older_version_that_exists_is_accepted(cli, endpoint, tmp_path) -> None:
    config = write_config(tmp_path / "old.toml", processor={"powertools_layer_version": 3})
    result = cli("up", "--yes", config=config)
    assert result.exit_code == 0, result
    conf = client(endpoint, "lambda").get_function_configuration(FunctionName="test-processor")
    assert [layer["Arn"] for layer in conf["Layers"]] == [f"{LAYER}:3"]


def test_a_caller_without_the_permission_is_told_which(cli, faults) -> None:
    faults.fail(
        "lambda",
        "GetLayerVersionByArn",
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:user/deployer is not authorized to perform: "
        f"lambda:GetLayerVersion on resource: {LAYER}:{POWERTOOLS_LATEST_VERSION} because no "
        "identity-based policy allows the lambda:GetLayerVersion action",
        status=403,
        times=None,
    )
    result = cli("plan")
    assert result.exit_code == 1, result
    assert "lambda:GetLayerVersion" in result.stderr
    assert "iotpipe iam-policy" in result.stderr
    assert FIELD not in result.stderr


def test_down_is_not_held_up_by_a_missing_layer_version(cli, tmp_path) -> None:
    assert cli("up", "--yes").exit_code == 0
    config = write_config(tmp_path / "old.toml", processor={"powertools_layer_version": 99})
    result = cli("down", "--yes", config=config)
    assert result.exit_code == 0, result


def test_a_region_without_the_layer_is_said_plainly(cli, faults) -> None:
    faults.fail(
        "lambda",
        "GetLayerVersionByArn",
        "AccessDeniedException",
        "User: arn:aws:iam::123456789012:root is not authorized to perform: "
        "lambda:GetLayerVersion on resource: the layer because no resource-based policy allows "
        "the lambda:GetLayerVersion action",
        status=403,
        times=None,
    )
    result = cli("plan")
    assert result.exit_code == 1, result
    assert "no version of AWS's layer AWSLambdaPowertoolsPythonV3-python311-arm64" in result.stderr
    assert faults.calls.count(("lambda", "GetLayerVersionByArn")) <= 20
    assert "Traceback" not in result.stderr
