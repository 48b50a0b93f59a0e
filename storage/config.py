"""The base of every config (a stage's, training's, the pipeline's) and its one-line errors.

Neutral ground for pipeline/, model/ and flows/: a config is at once a Prefect UI form, YAML and
`--set`, and fails the same clear way in each.
"""

from __future__ import annotations

import re
from typing import Optional

import fsspec
from pydantic import BaseModel, ConfigDict, field_validator

from storage.locations import public_name

# Numbers a config may hold: what numpy, torch and Arrow take (a bigger one fails deep inside a run).
MAX_INT = 2**63 - 1
_NUMBERS = (int, float, Optional[int], Optional[float])


class ConfigError(ValueError):
    """A config value that cannot work: the message names the field (dotted) and what is allowed.
    Raised up front by the CLI, and by stages for what only a run can check (an environment
    variable on a worker)."""


def one_line(text: str, limit: int = 2000) -> str:
    """Control characters (a newline in a YAML key, say) escaped and the length bounded, so an
    error message stays one line on a terminal."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[:limit] + "..."


class StageConfig(BaseModel):
    """Base of every config: unknown or mistyped fields are errors, not silently ignored; numbers
    are finite, fit in 64 bits, and a yes/no is no number."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, v, info):
        if cls.model_fields[info.field_name].annotation in _NUMBERS:
            if isinstance(v, bool):
                raise ValueError(f"expected a number, not {str(v).lower()}")
            if isinstance(v, int) and abs(v) > MAX_INT:
                raise ValueError(f"a number of {len(str(abs(v)))} digits is too large (at most 2**63 - 1)")
        return v


def require_files(urls, what: str):
    """Fail at configuration time, not in the middle of a run, when a file a config names is not
    there (paths or fsspec URLs; `urls` is a list or the values of a dict)."""
    for name, url in urls.items() if isinstance(urls, dict) else enumerate(urls):
        fs, path = fsspec.core.url_to_fs(url)
        if not fs.isfile(path):
            shown = public_name(url)  # no password or signature in an error message
            raise ValueError(
                f"{what} {name!r} not found: {shown}" if isinstance(urls, dict) else f"{what} not found: {shown}"
            )
    return urls
