"""Which environment variables hold the object-storage endpoint and credentials (shared by every run config).

A config holds variable NAMES, never values: configs are copied into run manifests, job submissions and logs, so
a secret written into one would leak. Each field left unset falls back to the standard AWS variable
(`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...); `grainclip.storage` turns this model into the S3
filesystem's settings.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from grainclip.config.base import ConfigModel

#: What an environment variable's name looks like here: upper-case letters, digits and `_`.
_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
#: An AWS access key id (AKIA..., ASIA..., ...): upper-case like a name, so refused by its shape.
_ACCESS_KEY_ID = re.compile(r"A(KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|ROA|PKA|SCA)[A-Z0-9]{16}")


def _variable_name(value: str) -> str:
    """Refuse anything but a variable's name; the message never repeats the value (it may be a secret)."""
    if not _NAME.fullmatch(value) or _ACCESS_KEY_ID.fullmatch(value):
        raise ValueError(
            "must be the NAME of an environment variable (upper-case letters, digits and _, e.g. MY_S3_SECRET), "
            "not a value: a config is copied into manifests and logs, so it never holds an endpoint or a secret"
        )
    return value


VariableName = Annotated[str, AfterValidator(_variable_name)]


class StorageConfig(ConfigModel):
    """Object storage (`s3://`): the environment variables that hold its endpoint, region and credentials.

    Every field names a variable (e.g. `secret_access_key_env: TEAM_S3_SECRET`), read where the storage is used:
    the driver and each Ray worker, so every node needs it set. Unset fields use the standard AWS variables.
    """

    endpoint_url_env: VariableName | None = Field(
        None, description="Variable holding the S3 endpoint URL; None: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."
    )
    region_env: VariableName | None = Field(None, description="Variable holding the region; None: AWS_REGION.")
    access_key_id_env: VariableName | None = Field(
        None, description="Variable holding the access key id; None: AWS_ACCESS_KEY_ID (or another AWS source)."
    )
    secret_access_key_env: VariableName | None = Field(
        None, description="Variable holding the secret access key; None: AWS_SECRET_ACCESS_KEY."
    )
    session_token_env: VariableName | None = Field(
        None, description="Variable holding a session token (temporary credentials); None: AWS_SESSION_TOKEN."
    )

    @model_validator(mode="after")
    def _key_pair(self) -> StorageConfig:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError("access_key_id_env and secret_access_key_env name a key pair: set both or neither")
        if self.session_token_env is not None and self.access_key_id_env is None:
            raise ValueError("session_token_env goes with a key pair: set access_key_id_env and secret_access_key_env")
        return self

    def named(self) -> dict[str, str]:
        """The fields that name a variable: {field: variable name}."""
        return self.model_dump(exclude_none=True)
