"""Moved to clusterd.settings (every option defined once); this name stays for older imports."""

from .settings import (  # noqa: F401
    Config,
    ConfigError,
    check_address,
    cpu_count,
    heartbeat_interval,
    parse_size,
    parse_workers,
    runtime_root,
)
