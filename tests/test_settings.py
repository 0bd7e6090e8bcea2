"""The settings table (clusterd/settings.py) is the one definition of every option: the click options,
the -c loader, the environment, Config, the agent's options and docs/options.md all follow it.
These run in-process, without starting an instance."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from clusterd import settings
from clusterd.cli import cli
from clusterd.settings import OPTIONS, ConfigError
from tests.conftest import ROOT


def command(name: str) -> click.Command:
    return cli.commands[name]


def parse(name: str, args: list[str], env: dict | None = None) -> dict:
    """The values a command would get, without running it."""
    import os
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("CLUSTERD_")]:
            del os.environ[key]
        os.environ.update(env or {})
        with command(name).make_context(name, list(args)) as ctx:
            return dict(ctx.params)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_docs_option_table_is_current():
    committed = (ROOT / "docs" / "options.md").read_text()
    assert committed == settings.options_markdown(), "run: python -m clusterd.settings > docs/options.md"


@pytest.mark.parametrize("cmd", ["run", "worker", "systemd-unit", "status", "reload", "scale", "stop", "call"])
def test_every_command_takes_exactly_its_options_from_the_table(cmd):
    params = {p.name: p for p in command(cmd).params if isinstance(p, click.Option)}
    for option in settings.options_for(cmd):
        param = params[option.key]
        assert param.opts + param.secondary_opts == option.flags or set(param.opts) == set(option.flags)
        assert param.envvar == option.envvar
        assert param.required == (cmd in option.required_by)
    table_keys = {o.key for o in OPTIONS}
    assert {name for name in params if name in table_keys} == {o.key for o in settings.options_for(cmd)}


def test_help_shows_each_default_and_variable():
    text = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).output
    for option in settings.options_for("run"):
        assert option.envvar in text, option.name
    assert "default: 30.0" in text and "default: auto" in text and "default: 16M" in text


def test_config_has_one_field_per_option_of_run_with_the_table_default():
    cfg = settings.Config(master="a:M", worker="a:W", name="a")
    for option in settings.options_for("run"):
        if option.key in ("config", "name"):
            continue
        assert getattr(cfg, option.key) == option.default_value(), option.name
    assert cfg.workers == settings.cpu_count()              # "auto"
    assert cfg.max_message_size == 16 * 1024 ** 2          # "16M"
    assert cfg.document()["graceful_timeout_s"] == 30.0 and cfg.document()["max_memory_bytes"] is None


def test_agent_config_follows_the_worker_command():
    agent = settings.AgentConfig(worker="a:W", connect="tcp://127.0.0.1:7100")
    assert agent.graceful_timeout == 30.0 and agent.heartbeat_timeout == 10.0 and agent.log_format == "text"
    assert {f for f in settings.config_keys(settings.AgentConfig)} == \
        {"worker"} | {o.key for o in settings.options_for("worker")}


def test_heartbeat_interval_has_one_formula():
    for timeout in (0.1, 2.0, 10.0, 60.0):
        cfg = settings.Config(master="a:M", worker="a:W", name="a", heartbeat_timeout=timeout)
        agent = settings.AgentConfig(worker="a:W", connect="tcp://127.0.0.1:1", heartbeat_timeout=timeout)
        assert cfg.heartbeat_interval == agent.heartbeat_interval == settings.heartbeat_interval(timeout)
    assert settings.heartbeat_interval(10.0) == 1.0 and settings.heartbeat_interval(0.1) == 0.05
    assert settings.heartbeat_interval(2.0) == 0.5


def test_systemd_default_stop_timeout_follows_the_graceful_timeout_default():
    from clusterd.ops import systemd
    assert systemd.DEFAULT_GRACEFUL_TIMEOUT == settings.default("graceful-timeout")


def test_short_flags_and_long_flags_agree():
    short = parse("run", ["-w", "3", "-n", "x", "-b", "tcp://127.0.0.1:7000", "-t", "5", "a:M", "a:W"])
    long = parse("run", ["--workers", "3", "--name", "x", "--bind", "tcp://127.0.0.1:7000", "--call-timeout", "5",
                         "a:M", "a:W"])
    assert short == long
    assert short["workers"] == 3 and short["binds"] == ("tcp://127.0.0.1:7000",) and short["call_timeout"] == 5.0


def test_flags_over_environment_over_defaults():
    env = {"CLUSTERD_WORKERS": "4", "CLUSTERD_MAX_MEMORY": "1G", "CLUSTERD_BIND": "ipc:///tmp/a ipc:///tmp/b"}
    values = parse("run", ["--workers", "2", "a:M", "a:W"], env)
    assert values["workers"] == 2 and values["max_memory"] == 1024 ** 3
    assert values["binds"] == ("ipc:///tmp/a", "ipc:///tmp/b")
    assert values["queue_timeout"] == 2.0


def test_file_keys_in_either_spelling_and_in_a_table(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[clusterd]\nmax-memory = "2G"\nqueue_timeout = 3\nbind = "ipc:///tmp/x"\nworker_bind = []\n')
    assert settings.load_file(str(conf)) == {"max_memory": "2G", "queue_timeout": 3, "binds": ["ipc:///tmp/x"],
                                             "worker_binds": []}
    values = parse("run", ["-c", str(conf), "--queue-timeout", "4", "a:M", "a:W"])
    assert values["max_memory"] == 2 * 1024 ** 3 and values["queue_timeout"] == 4.0


@pytest.mark.parametrize("content", ["connect = 'tcp://x:1'\n", "follow = true\n", "config = 'a.toml'\n"])
def test_file_refuses_keys_that_run_does_not_take(tmp_path, content):
    conf = tmp_path / "c.toml"
    conf.write_text(content)
    with pytest.raises(ConfigError, match="unknown key"):
        settings.load_file(str(conf))


@pytest.mark.parametrize("name,value", [("workers", True), ("workers", 1.5), ("crash-limit", -1),
                                        ("graceful-timeout", "soon"), ("max-memory", "lots"), ("bind", "nowhere"),
                                        ("balance", "nope"), ("debug", "yes"), ("max-batch", [1])])
def test_each_option_refuses_a_bad_value(name, value):
    with pytest.raises(ConfigError):
        settings.BY_NAME[name].convert(value)


def run_config(**overrides) -> object:
    return settings.Config(master="a:M", worker="a:W", name="a", **overrides)


def test_validation_refuses_an_exposed_worker_link_without_keys(tmp_path):
    with pytest.raises(ConfigError, match="not a loopback address"):
        settings.validate_run(run_config(worker_binds=["tcp://0.0.0.0:7100"]))
    settings.validate_run(run_config(worker_binds=["tcp://127.0.0.1:7100", "ipc:///tmp/w"]))
    with pytest.raises(ConfigError, match="--curve-dir"):
        settings.validate_run(run_config(worker_binds=["tcp://0.0.0.0:7100"], curve_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="not a loopback address"):
        settings.validate_agent(settings.AgentConfig(worker="a:W", connect="tcp://10.0.0.1:7100"))


def test_validation_with_keys_accepts_an_exposed_worker_link(tmp_path):
    from clusterd.keygen import write_keys
    write_keys(tmp_path)
    settings.validate_run(run_config(worker_binds=["tcp://0.0.0.0:7100"], curve_dir=str(tmp_path)))
    settings.validate_agent(settings.AgentConfig(worker="a:W", connect="tcp://10.0.0.1:7100",
                                                 curve_dir=str(tmp_path)))
    assert settings.unencrypted_binds(run_config(binds=["tcp://0.0.0.0:7000", "tcp://127.0.0.1:7001"])) == \
        ["tcp://0.0.0.0:7000"]


def test_validation_checks_watched_paths(tmp_path):
    with pytest.raises(ConfigError, match="--watch-version"):
        settings.validate_run(run_config(watch_version=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="--reload-on-change"):
        settings.validate_run(run_config(reload_on_change=str(tmp_path / "nope")))


@pytest.mark.parametrize("name,master", [(None, ":M"), (".hidden", "a:M"), ("a/b", "a:M")])
def test_unusable_instance_names_are_refused(name, master):
    with pytest.raises(ConfigError):
        settings.instance_name(name, master)
    assert settings.instance_name(None, "myapp.rpc:Master") == "myapp"


def test_cluster_env_ignores_the_developers_clusterd_variables(monkeypatch, request, runtime_dir):
    monkeypatch.setenv("CLUSTERD_WORKERS", "7")
    monkeypatch.setenv("CLUSTERD_CONFIG", "/nowhere.toml")
    env = request.getfixturevalue("cluster_env")
    assert env["CLUSTERD_RUNTIME_DIR"] == str(runtime_dir)
    assert not [k for k in env if k.startswith("CLUSTERD_") and k != "CLUSTERD_RUNTIME_DIR"]


def test_the_old_module_names_still_import():
    import clusterd.config
    import clusterd.log
    import clusterd.ops.log
    import clusterd.ops.systemd
    import clusterd.systemd
    assert clusterd.log is clusterd.ops.log and clusterd.systemd is clusterd.ops.systemd
    assert clusterd.config.Config is settings.Config and clusterd.config.parse_workers("2") == 2
