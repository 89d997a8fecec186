"""Through the whole pipeline (rule -> Kinesis -> processor): a device that names another device in
its message body does not write that device's state."""

from __future__ import annotations

import json
import time
from pathlib import Path

import boto3

from iotpipe.aws import Aws
from iotpipe.config import load_config
from iotpipe.context import StackContext
from iotpipe.local.plane import LocalDataPlane


def test_a_device_cannot_write_another_devices_state(cli, endpoint: str, config_file: Path):
    assert cli("up", "--yes").exit_code == 0
    config = load_config(config_file)
    aws = Aws(endpoint_url=endpoint, region=config.stack.region)
    names = StackContext(config, aws).names

    def topic(thing: str) -> str:
        # As devices publish it (Basic Ingest goes straight to the rule).
        telemetry = names.telemetry_topic(thing)
        if config.iot.basic_ingest:
            return f"$aws/rules/{names.topic_rule}/{telemetry}"
        return telemetry

    now = int(time.time() * 1000)
    victim = {"ts": now - 5_000, "seq": 1, "metrics": {"v": 1}}
    spoof = {"device_id": "victim", "ts": now - 1_000, "seq": 2, "metrics": {"v": 666}}
    plane = LocalDataPlane(aws, names).start()
    try:
        plane.publish(topic("victim"), json.dumps(victim).encode(), client_id="victim")
        plane.publish(topic("attacker"), json.dumps(spoof).encode(), client_id="attacker")
        plane.drain()
    finally:
        plane.close()

    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=config.stack.region)
    items = dynamodb.scan(TableName=names.device_state_table)["Items"]
    state = {item["device_id"]["S"]: item for item in items}
    assert state["victim"]["ts"]["N"] == str(now - 5_000), plane.function_log.getvalue()[-3000:]
    assert state["victim"]["metrics"]["M"]["v"]["N"] == "1.0"
    # Whichever `device_id` the rule's output keeps, the reading is never the victim's: the
    # emulator's rule keeps the topic's (the attacker's own state); had it kept the body's, the
    # processor would have quarantined it (tests/test_processor_time.py).
    assert set(state) <= {"victim", "attacker"}
    if "attacker" in state:
        assert state["attacker"]["metrics"]["M"]["v"]["N"] == "666.0"
    else:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=config.stack.region)
        listing = s3.list_objects_v2(Bucket=names.archive_bucket, Prefix=names.quarantine_prefix)
        assert listing.get("KeyCount", 0) == 1, "the spoof went to the quarantine"
