"""Running clusterd in production: systemd integration and the lifecycle log."""
