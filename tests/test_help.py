"""Help that teaches (issue 14, item 9): every option says what it does, its default and its
CLUSTERD_* variable; each command's help ends with examples; the top-level list is not cut."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest

from clusterd.cli import cli

from .conftest import ROOT, instance_env

COMMANDS = sorted(cli.commands)


def help_text(*args: str, columns: int = 100) -> str:
    proc = subprocess.run([sys.executable, "-m", "clusterd", *args, "--help"], cwd=ROOT, text=True,
                          capture_output=True, env={**instance_env(ROOT / ".no-runtime"), "COLUMNS": str(columns)},
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_a_description_and_a_variable(command):
    for param in cli.commands[command].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"clusterd {command} {param.opts[0]} has no description"
            assert param.envvar and str(param.envvar).startswith("CLUSTERD_"), (command, param.opts)
            assert param.show_envvar, (command, param.opts)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_commands_help_ends_with_examples_and_shows_variables(command):
    text = help_text(command)
    examples = text.split("Examples:", 1)
    assert len(examples) == 2, f"clusterd {command} --help has no examples"
    assert examples[1].count("clusterd ") >= 1
    options = [p for p in cli.commands[command].params if isinstance(p, click.Option) and p.name != "help"]
    if options:
        assert "env var: CLUSTERD_" in text


def test_defaults_are_shown():
    text = " ".join(help_text("run").split())
    assert "default: auto" in text and "default: 30" in text
    assert "default: 50" in " ".join(help_text("logs").split())


def test_the_top_level_list_does_not_cut_descriptions_off():
    text = help_text(columns=80)
    listing = text.split("Commands:", 1)[1]
    assert "..." not in listing
    for command in COMMANDS:
        first = (cli.commands[command].help or "").strip().split("\n\n")[0].split()
        assert " ".join(first[-2:]) in " ".join(listing.split()), command


def test_common_options_have_short_flags():
    text = help_text("run")
    for short, long in (("-w", "--workers"), ("-b", "--bind"), ("-n", "--name"), ("-t", "--call-timeout"),
                        ("-c", "--config")):
        assert f"{short}, {long}" in text
