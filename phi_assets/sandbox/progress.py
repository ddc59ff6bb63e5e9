"""The progress bar of a run (``run_programs(..., progress=True)``), local or on the service."""

from __future__ import annotations

import time

PROGRESS_DELAY_S = 1.0  # a run's progress bar shows once it has lasted this long


class Progress:
    """A tqdm bar over ``total`` programs that shows only once the run has lasted ``delay_s`` (tqdm's own
    ``delay``). tqdm is imported only then: its import takes about 50 ms, a good part of a short run."""

    def __init__(self, total: int, delay_s: float | None = None, desc: str = "sandbox") -> None:
        self.total, self.desc = total, desc
        self.delay_s = PROGRESS_DELAY_S if delay_s is None else delay_s
        self.done = 0
        self.bar = None
        self.started = time.monotonic()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif (elapsed := time.monotonic() - self.started) >= self.delay_s:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit="program")
            self.bar.start_t = self.bar.last_print_t = time.time() - elapsed  # rate: from the start
            self.bar.update(self.done)
