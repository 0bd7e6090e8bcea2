"""Process titles, so that `ps` tells clusterd's processes apart (`clusterd: myapp worker 3 gen 2`)."""

from __future__ import annotations

import os


def set_title(title: str) -> None:
    """What `ps` and `top` show for this process; nothing when setproctitle is not installed."""
    had = "SPT_NOENV" in os.environ
    os.environ["SPT_NOENV"] = "1"  # keep /proc/PID/environ readable: the title fits where argv was
    try:
        import setproctitle
        setproctitle.setproctitle(title)
    except ImportError:
        pass
    finally:
        if not had:
            os.environ.pop("SPT_NOENV", None)
