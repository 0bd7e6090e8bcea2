"""Click options generated from the settings table (clusterd/settings.py), and the -c file loader."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .. import settings
from ..settings import ConfigError, Option
from .common import UserError


class SettingType(click.ParamType):
    """Converts a flag or variable with the option's own parser, so every source is checked alike."""

    def __init__(self, option: Option) -> None:
        self.option = option
        self.name = option.metavar or option.name

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None:
            return None
        try:
            return self.option.convert_one(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


def _load_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """-c FILE: its keys become defaults under flags and CLUSTERD_* variables (click's own order)."""
    if not path:
        return path
    try:
        values = settings.load_file(path, ctx.command.name or settings.RUN)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def click_option(option: Option, command: str) -> Callable[[Any], Any]:
    """The click option of one table entry, as `command` takes it."""
    shown = not (option.default is None or option.multiple or option.flag)
    kwargs: dict[str, Any] = {
        "help": option.help_text(command),
        "envvar": option.envvar,
        "show_envvar": True,
        "show_default": shown,
        "required": command in option.required_by,
    }
    if option.name == "config":
        kwargs.update(type=click.Path(dir_okay=False), is_eager=True, callback=_load_config_file)
    elif option.flag:
        kwargs.update(is_flag=True, default=option.default)
    elif option.choices:
        kwargs.update(type=click.Choice(option.choices), default=option.default)
    else:
        kwargs.update(type=SettingType(option), default=None if option.multiple else option.default)
    if option.multiple:
        kwargs["multiple"] = True
    if option.bare_value is not None:
        kwargs.update(is_flag=False, flag_value=option.bare_value)
    if option.metavar and not option.choices:
        kwargs["metavar"] = option.metavar
    return click.option(*option.flags_for(command), option.key, **kwargs)


def setting_options(command: str) -> Callable[[Any], Any]:
    """Decorator: every option of the table that `command` takes, in table order."""
    def decorate(func: Any) -> Any:
        for option in reversed(settings.options_for(command)):
            func = click_option(option, command)(func)
        return func
    return decorate
