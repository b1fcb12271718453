"""SIGINT to `gemctl train` (or run) while DVC runs a stage command.

Ctrl-C in a terminal reaches the stage command too, which stops its job (executor.wait_all). A SIGINT sent to gemctl
alone would be lost: DVC ignores SIGINT while its command runs. So DVC runs in a worker thread (where it leaves
signals alone), and this process, on SIGINT, asks the jobs launched since it started to stop at their next step
boundary, as `gemctl cancel` does; asking again what the stage command asked already is harmless. A job launched
after that is asked at once. A second SIGINT stops them at once, a third stops waiting for DVC. The stage command
then exits 130 and DVC records nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from . import registry

T = TypeVar("T")


def forwarding_interrupts(root: Path, fn: Callable[[], T]) -> T:
    """fn() (DVC's reproduce) in a worker thread; SIGINTs meanwhile stop the jobs it launches (see above)."""
    since, outcome = time.time(), {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=work, name="dvc-reproduce", daemon=True)
    thread.start()
    interrupts, asked = 0, set()
    # polled with sleep, not Thread.join: a KeyboardInterrupt inside join can leave the thread marked as ended
    while not outcome:
        try:
            time.sleep(0.25)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts == 3:
                raise
            asked.clear()  # the second one stops them all again, at once
        if interrupts:
            jobs = [r for r in registry.jobs_since(root, since) if r.job_id not in asked]
            if jobs:
                (registry.request_stop if interrupts == 1 else registry.stop_now)(jobs)
                asked.update(r.job_id for r in jobs)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
