"""Turn a user's mistake into one readable line and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import typer

from grainclip.config.base import ConfigError
from grainclip.images import ImageDecodeError
from grainclip.schema import SchemaError

F = TypeVar("F", bound=Callable)

USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, SchemaError, ImageDecodeError, FileNotFoundError)


def user_errors(func: F) -> F:
    """CLI decorator: expected user errors print `error: ...` and exit 2; bugs still show a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            logging.getLogger("grainclip").debug("user error", exc_info=True)
            # An error that found several problems (preflight) carries them: one `error:` line each.
            for problem in getattr(exc, "problems", None) or [exc]:
                typer.secho(f"error: {problem}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
