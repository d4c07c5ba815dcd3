"""The fault-tolerance options of a run, as a plain dataclass (no torch: the CLI builds it before any worker)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResilienceConfig:
    """Fault-tolerance options of a run (the CLI builds it; every field is a plain value so it stays JSON-able)."""

    #: save every N steps; 0 = only the final step; -1 = `auto` (Young/Daly from the measured stall and the MTBF)
    checkpoint_every: int = 0
    #: save the final step (off only with `--checkpoint-every never`, e.g. for equivalence reference runs)
    save_final: bool = True
    #: MTBF for `auto` (default: published failure rate × devices)
    mtbf_hours: float | None = None
    #: keep the newest K checkpoints
    keep_last: int = 3
    #: and every checkpoint whose step is a multiple of N (0 = none)
    keep_every: int = 0
    #: write checkpoints in the background (dcp.async_save) instead of blocking the loop
    async_checkpoint: bool = True
    #: faults to inject (`kill:rank=1,step=7`, ...)
    inject: tuple[str, ...] = ()
    #: continue from the newest valid checkpoint in RUN_DIR/checkpoints when there is one
    resume: bool = True
    #: a checkpoint directory (or run directory) to start from when RUN_DIR has none
    resume_from: str | None = None
    #: start at step 0 although every checkpoint of RUN_DIR was quarantined as bad (else that is refused)
    restart_from_scratch: bool = False
    #: file holding the key that authenticates checkpoint manifests (else $BASTION_CHECKPOINT_KEY, else none)
    checkpoint_key_file: str | None = None
    #: skip the batch of these (1-based) steps, as the NaN guard would (for reference runs)
    skip_batches: tuple[int, ...] = ()
    #: stop (with a checkpoint) after this step, e.g. before a maintenance window; 0 = run to the end
    stop_after_step: int = 0
    #: a step longer than this factor × the recent median is a hang
    hang_factor: float = 10.0
    #: ... but only after at least this many seconds
    hang_min_s: float = 60.0
    #: gradient-norm spike factor of the NaN guard (0 = only NaN/Inf)
    spike_factor: float = 20.0

    @property
    def active(self) -> bool:
        return bool(self.checkpoint_every or self.inject or self.resume_from or self.skip_batches
                    or self.stop_after_step)
