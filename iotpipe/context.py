"""What every resource reads: the config, the AWS account the stack lives in, and its names.

The resources (iotpipe.resources) are built from one `StackContext`; the module that assembles
them into the stack (iotpipe.stack) and the commands hand it in. What a resource's `desired()`
needs from AWS (the account id, whether Timestream is usable) is asked once, by `probe()`, before
the resources are built, and held here as plain values: `desired()` never calls AWS.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from iotpipe.aws import Aws
from iotpipe.config import Config
from iotpipe.engine.model import STACK_TAG
from iotpipe.errors import IotpipeError
from iotpipe.naming import Names


@dataclass
class StackContext:
    config: Config
    aws: Aws
    # The account the stack's ARNs name; asked of STS when not given.
    account: str | None = None
    # Whether the account may use Timestream; probed when not given.
    timeseries_usable: bool | None = None

    @property
    def stack(self) -> str:
        return self.config.stack.name

    @cached_property
    def names(self) -> Names:
        return Names(
            stack=self.stack,
            app=self.config.stack.app,
            region=self.aws.region,
            account=self.account or self.aws.account_id,
            partition=self.aws.partition,
        )

    def probe(self) -> StackContext:
        """Ask AWS, once and side by side, what the resources' desired state depends on and the
        caller did not hand in: the account id (every ARN) and, with the time-series sink on,
        whether the account may use Timestream. Returns the context, now holding the answers."""
        from iotpipe.resources import timestream

        asks = []
        if self.account is None:
            asks.append(lambda: setattr(self, "account", self.aws.account_id))
        if self.config.timeseries.enabled and self.timeseries_usable is None:
            asks.append(lambda: setattr(self, "timeseries_usable", timestream.available(self.aws)))
        self.aws.gather(*asks)
        return self

    @property
    def timeseries_active(self) -> bool:
        """Configured and available: the processor writes time series only then."""
        if not self.config.timeseries.enabled:
            return False
        if self.timeseries_usable is None:
            raise IotpipeError(
                "internal: whether Timestream is usable was not probed before the resources "
                "were built (StackContext.probe)"
            )
        return self.timeseries_usable

    @property
    def tags(self) -> dict[str, str]:
        return {STACK_TAG: self.stack}

    @property
    def tag_list(self) -> list[dict[str, str]]:
        """The tags in the Key/Value list form most AWS APIs take."""
        return [{"Key": k, "Value": v} for k, v in self.tags.items()]
