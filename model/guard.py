"""Loss-spike and NaN guard: decides, on the device, whether an update is applied.

A non-finite loss or gradient norm, or a loss far above the recent mean, usually means a bad batch
or an optimizer blow-up. Applying that update can ruin hours of training; skipping it (PaLM does the
same) usually lets training continue. Too many skips in a row means something is really wrong, so
the run stops with a message that says what happened and where.

The decision never reads the loss to the host (that would stall the GPU every step): it is a device
tensor handed to the fused AdamW as `found_inf`, which then leaves weights, moments and step count
untouched. The counts and the reason are read only at log, eval and checkpoint steps (`verify`), so a
run that must stop raises there, naming the step that went wrong; from that step on every update is
skipped, so nothing after it reaches the weights or a checkpoint.
"""

from __future__ import annotations

import torch

WINDOW = 50  # accepted losses the spike test compares against
MIN_HISTORY = 10  # no spike test before this many accepted losses


class TrainingDiverged(RuntimeError):
    """Raised when the guard stops a run."""


class LossGuard:
    def __init__(self, mode: str, spike_factor: float, max_skipped: int, device: str = "cpu"):
        self.mode, self.spike_factor, self.max_skipped, self.device = mode, spike_factor, max_skipped, device
        z = lambda dtype=torch.float64: torch.zeros((), dtype=dtype, device=device)  # noqa: E731
        self.recent = torch.zeros(WINDOW, dtype=torch.float64, device=device)  # ring of accepted losses
        self.n_recent, self.skipped_in_a_row, self.skipped_total = z(torch.int64), z(torch.int64), z(torch.int64)
        # The first step that must stop the run (0: none yet), and its loss, norm and recent mean.
        self.stop_step, self.stop_values = z(torch.int64), torch.zeros(3, dtype=torch.float64, device=device)
        self.pending: dict[int, str] = {}  # step -> data position, for the message, until verified

    def check(
        self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, warmed_up: bool, where: str
    ) -> torch.Tensor:
        """A device bool: True means skip this update. No host read; see verify()."""
        loss, grad_norm = loss.detach().double(), grad_norm.detach().double()
        if self.mode == "off":
            return torch.zeros((), dtype=torch.bool, device=self.device)
        self.pending[step] = where
        filled = self.n_recent.clamp(max=WINDOW)
        mean = self.recent.sum() / filled.clamp(min=1)
        bad = ~torch.isfinite(loss) | ~torch.isfinite(grad_norm)
        if self.spike_factor and warmed_up:
            bad = bad | ((filled >= MIN_HISTORY) & (loss > self.spike_factor * mean))
        stopped = self.stop_step > 0
        skip = bad | stopped
        keep = ~skip
        slot = self.n_recent % WINDOW
        self.recent[slot] = torch.where(keep, loss, self.recent[slot])
        self.n_recent += keep.long()
        self.skipped_in_a_row = torch.where(keep, 0, self.skipped_in_a_row + 1)
        self.skipped_total += skip.long()
        must_stop = bad & ~stopped
        if self.mode == "skip":
            must_stop = must_stop & (self.skipped_in_a_row > self.max_skipped)
        self.stop_step = torch.where(must_stop, step, self.stop_step)
        self.stop_values = torch.where(must_stop, torch.stack([loss, grad_norm, mean]), self.stop_values)
        return skip

    def verify(self) -> None:
        """Read the guard's state to the host (a sync: only at log, eval and checkpoint steps) and
        raise TrainingDiverged if a step since the last call must stop the run."""
        if self.mode == "off":
            return
        step = int(self.stop_step)
        pending, self.pending = self.pending, {}
        if not step:
            return
        loss, grad_norm, mean = self.stop_values.tolist()
        where = pending.get(step, "data position unknown")
        if not (torch.isfinite(torch.tensor(loss)) and torch.isfinite(torch.tensor(grad_norm))):
            why = f"non-finite loss {loss} or gradient norm {grad_norm}"
        else:
            why = f"loss spike: {loss:.4f} is over {self.spike_factor} x the recent mean {mean:.4f}"
        if self.mode == "stop":
            raise TrainingDiverged(
                f"step {step}: {why} ({where}); guard.mode='stop'. Resume from the last "
                f"checkpoint with a lower optimizer.learning_rate, or set guard.mode='skip'"
            )
        raise TrainingDiverged(
            f"step {step}: {self.max_skipped + 1} updates in a row skipped, the last for "
            f"{why} ({where}); training has diverged. Resume from the last checkpoint "
            f"with a lower optimizer.learning_rate"
        )

    def total_skipped(self) -> int:
        return int(self.skipped_total)

    def state_dict(self) -> dict:
        return {
            "recent": self.recent.cpu(),
            "n_recent": int(self.n_recent),
            "skipped_in_a_row": int(self.skipped_in_a_row),
            "skipped_total": int(self.skipped_total),
        }

    def load_state_dict(self, state: dict) -> None:
        if isinstance(state["recent"], list):  # written before the guard moved to the device
            losses = state["recent"][-WINDOW:]
            recent, n = torch.zeros(WINDOW, dtype=torch.float64), len(losses)
            recent[:n] = torch.tensor(losses, dtype=torch.float64)
        else:
            recent, n = state["recent"], state["n_recent"]
        self.recent = recent.to(self.device, torch.float64)
        self.n_recent = torch.tensor(n, device=self.device)
        self.skipped_in_a_row = torch.tensor(state["skipped_in_a_row"], device=self.device)
        self.skipped_total = torch.tensor(state["skipped_total"], device=self.device)
