"""Operations: what clusterd needs from the machine and the service manager around it (cgroup CPU
quota, systemd integration, the lifecycle log)."""
