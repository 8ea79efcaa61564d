"""One line per finished trial while a search runs; Ray's own tables stay off."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from ray.tune import Callback

# Set by Ctrl-C during fit(): Tune returns normally after it, so callers check this instead.
# Module-level because `valley resume` runs the Progress object that Tune unpickles, not a new one.
INTERRUPTED = threading.Event()


class Progress(Callback):
    def __init__(self, total: int, metric: str, say: Callable[..., None]) -> None:
        self.total = total
        self.metric = metric
        self.say = say
        self.done = 0

    def setup(self, **info: Any) -> None:
        """Wrap Tune's own SIGINT handler (installed just before callbacks are set up) to see Ctrl-C."""
        tune_handler = signal.getsignal(signal.SIGINT)
        if threading.current_thread() is not threading.main_thread() or not callable(tune_handler):
            return

        def on_sigint(sig: int, frame: Any) -> None:
            INTERRUPTED.set()
            tune_handler(sig, frame)

        signal.signal(signal.SIGINT, on_sigint)

    def _line(self, trial: Any, outcome: str) -> None:
        self.done += 1
        result = trial.last_result or {}
        parts = [f"[{self.done:>3}/{self.total}] {trial.trial_id} {outcome:<9}"]
        for key in dict.fromkeys((self.metric, "val_loss", "val_acc", "val_csd")):
            if isinstance(result.get(key), float):
                parts.append(f"{key} {result[key]:.4f}")
        if "n_params" in result:
            parts.append(f"n_params {result['n_params']:,}")
        if "epoch" in result:
            parts.append(f"epochs {result['epoch']}")
        if "time_total_s" in result:
            parts.append(f"{result['time_total_s']:.1f} s")
        self.say("  ".join(parts))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        finished = result.get("early_stopped") or result.get("epoch") == trial.config.get("max_epochs")
        self._line(trial, "done" if finished else "stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "failed")
        if trial.error_file:
            self.say(f"      error: {first_error_line(trial.error_file)}")


def first_error_line(path: str) -> str:
    """The exception line of a trial's traceback (its last non-empty line)."""
    try:
        with open(path) as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return "(error file unreadable)"
    return lines[-1][:300] if lines else "(empty error file)"
