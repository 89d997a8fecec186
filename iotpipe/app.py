"""The application object every command is handed, and the output formats it may print in.

The root command (iotpipe.cli) builds one `App` from the global options; the commands
(iotpipe.commands) read the config, AWS and the output through it.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from iotpipe.config import Config, load_config
from iotpipe.output import Output

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class App:
    """What every command needs: the parsed global options, the config, AWS and the output."""

    def __init__(
        self,
        *,
        config_path: Path,
        profile: str | None,
        region: str | None,
        endpoint_url: str | None,
        output: str,
        verbose: int,
    ) -> None:
        self.config_path = config_path
        self.profile = profile
        self.region = region
        self.endpoint_url = endpoint_url
        self.out = Output(output, verbose)

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @cached_property
    def aws(self) -> Aws:
        # Imported here: `validate` and `init` need no boto3.
        from iotpipe.aws import Aws

        # The config is validated before any client exists: a bad config makes no AWS call.
        config = self.config
        return Aws(
            profile=self.profile,
            # `--region ""` is checked (and refused), not taken for "no --region".
            region=config.stack.region if self.region is None else self.region,
            endpoint_url=self.endpoint_url,
        )

    @cached_property
    def stack(self) -> StackContext:
        from iotpipe.context import StackContext

        return StackContext(self.config, self.aws)
