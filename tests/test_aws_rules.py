"""The AWS-rules mechanism of the emulator: refusals in the service's own protocol, state per
account that a reset forgets, a clock the tests move."""

from __future__ import annotations

import urllib.request

import boto3
import botocore.exceptions

from tests.support import client


def _recreate_refused(sqs) -> bool:
    url = sqs.create_queue(QueueName="q1")["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    try:
        sqs.create_queue(QueueName="q1")
    except botocore.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "AWS.SimpleQueueService.QueueDeletedRecently"
        assert "You must wait 60 seconds after deleting a queue" in exc.response["Error"]["Message"]
        return True
    return False


def test_a_refusal_arrives_as_aws_sends_it_and_the_clock_ends_it(endpoint, aws_clock):
    sqs = client(endpoint, "sqs")
    assert _recreate_refused(sqs)
    aws_clock.advance(61)
    sqs.create_queue(QueueName="q1")


def test_a_reset_of_the_emulator_over_http_forgets_the_rules_state(endpoint):
    sqs = client(endpoint, "sqs")
    url = sqs.create_queue(QueueName="q1")["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request) as reply:
        reply.read()
    sqs.create_queue(QueueName="q1")


def test_rule_state_belongs_to_one_region(endpoint):
    sqs = client(endpoint, "sqs")
    url = sqs.create_queue(QueueName="q1")["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    boto3.client("sqs", endpoint_url=endpoint, region_name="eu-west-1").create_queue(QueueName="q1")
