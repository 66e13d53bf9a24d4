"""One log line per cause and interval, where a failure repeats for every message.

A store outage fails the same way for every scan until it ends: logged per scan, a Redis down for a
minute at 1,000 messages a second wrote 60,000 identical lines and buried whatever else happened.
:class:`Throttle` lets the first line of a cause through, holds back the repeats for ``interval``
seconds, and says in the next line it lets through how many it held back.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable


class Throttle:
    """``throttle.warning(logger, key, msg, *args)``: at most one line per ``key`` every ``interval``
    seconds; the next one ends with ``(N more like it in the last S s)``."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        #: key -> (time of the last line let through, repeats held back since)
        self._seen: dict[str, tuple[float, int]] = {}

    def warning(self, logger: logging.Logger, key: str, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` as a warning unless ``key`` was logged less than ``interval`` ago;
        True when the line went out."""
        now = self._clock()
        with self._lock:
            last, held = self._seen.get(key, (None, 0))
            if last is not None and now - last < self.interval:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            msg = f"{msg} ({held} more like it in the last {now - last:.0f} s)"  # type: ignore[operator]
        logger.warning(msg, *args)
        return True


#: the process's throttle for failures that repeat per scan (store outages)
THROTTLE = Throttle()
