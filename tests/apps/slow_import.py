"""An app whose import takes long (a big framework loading): a stop must not wait for it to finish."""

from __future__ import annotations

import os
import time

from clusterd import MasterEndpoint, WorkerEndpoint

if os.environ.get("SLOW_IMPORT_MARK"):
    with open(os.environ["SLOW_IMPORT_MARK"], "w") as mark:
        mark.write(str(os.getpid()))
time.sleep(float(os.environ.get("SLOW_IMPORT_S", "0")))


class Master(MasterEndpoint):
    pass


class Worker(WorkerEndpoint):
    pass
