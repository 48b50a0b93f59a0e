"""Loss-spike and NaN guard: decides, before the optimizer step, whether an update is applied.

A non-finite loss or gradient norm, or a loss far above the recent mean, usually means a bad batch
or an optimizer blow-up. Applying that update can ruin hours of training; skipping it (PaLM does the
same) usually lets training continue. Too many skips in a row means something is really wrong, so
the run stops with a message that says what happened and where.
"""

from __future__ import annotations

import math
from collections import deque

WINDOW = 50  # accepted losses the spike test compares against
MIN_HISTORY = 10  # no spike test before this many accepted losses


class TrainingDiverged(RuntimeError):
    """Raised when the guard stops a run."""


class LossGuard:
    def __init__(self, mode: str, spike_factor: float, max_skipped: int):
        self.mode, self.spike_factor, self.max_skipped = mode, spike_factor, max_skipped
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.skipped_in_a_row, self.skipped_total = 0, 0

    def problem(self, loss: float, grad_norm: float, warmed_up: bool) -> str | None:
        """Why this update should not be applied, or None."""
        if not math.isfinite(loss) or not math.isfinite(grad_norm):
            return f"non-finite loss {loss} or gradient norm {grad_norm}"
        if self.spike_factor and warmed_up and len(self.recent) >= MIN_HISTORY:
            mean = sum(self.recent) / len(self.recent)
            if loss > self.spike_factor * mean:
                return f"loss spike: {loss:.4f} is over {self.spike_factor} x the recent mean {mean:.4f}"
        return None

    def check(self, step: int, loss: float, grad_norm: float, warmed_up: bool, where: str) -> bool:
        """True: apply the update. False: skip it. Raises TrainingDiverged when the run must stop."""
        why = None if self.mode == "off" else self.problem(loss, grad_norm, warmed_up)
        if why is None:
            self.recent.append(loss)
            self.skipped_in_a_row = 0
            return True
        if self.mode == "stop":
            raise TrainingDiverged(f"step {step}: {why} ({where}); loss_guard='stop'. Resume from the last "
                                   f"checkpoint with a lower learning_rate, or set loss_guard='skip'")
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        if self.skipped_in_a_row > self.max_skipped:
            raise TrainingDiverged(f"step {step}: {self.skipped_in_a_row} updates in a row skipped, the last for "
                                   f"{why} ({where}); training has diverged. Resume from the last checkpoint "
                                   f"with a lower learning_rate")
        return False

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "skipped_in_a_row": self.skipped_in_a_row,
                "skipped_total": self.skipped_total}

    def load_state_dict(self, state: dict) -> None:
        self.recent = deque(state["recent"], maxlen=WINDOW)
        self.skipped_in_a_row, self.skipped_total = state["skipped_in_a_row"], state["skipped_total"]
