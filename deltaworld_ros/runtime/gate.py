"""The frame gate: which frames of one camera stream are kept, and where its history restarts.

The one owner of the streaming rules; the Forecaster (and so the node), the evaluator, replay
pacing and training's clip cutter all keep frames through it. Frames arrive in order, each with
its header time in seconds (a ROS stamp: stamp_ns / 1e9, the same float everywhere) and its
size (h, w). Every rule measures against the LAST KEPT frame, the newest of the history:

1. The stream's first frame is kept and starts the history.
2. A size other than the last kept frame's restarts the history ("resolution changed").
3. A stamp before the last kept one restarts it ("stamp went backwards": a bag loop, a clock
   reset). A stamp between the last kept and a later gated one is only gated: the history never
   held the frame it went back from.
4. A stamp more than max_gap * frame_interval after the last kept restarts it ("gap in stamps").
5. Otherwise a frame is kept once (1 - tolerance) * frame_interval has passed since the last
   kept one, and gated before that (a repeated stamp is gated).

A restart keeps its frame: the first of the new history. As the rules read only the last kept
frame, the gate keeps its own output unchanged: frames gated once (by the evaluator, say) and
gated again (by the Forecaster they are handed to) give the same frames and the same restarts.

A lone frame of another size is dropped before the gate by the camera intake (intake.py), so
that one odd frame does not cost a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

TOLERANCE = 0.25  # default share of frame_interval a kept frame may come early
MAX_GAP = 3.0  # default gap, in frame intervals, that restarts the history

RESOLUTION_CHANGED = "resolution changed"
STAMP_BACKWARDS = "stamp went backwards"
GAP = "gap in stamps"
GATED = "gated"  # the drop of a frame that came before the next frame interval


@dataclass(frozen=True)
class GateSettings:
    frame_interval: float  # seconds between kept frames: the model's forecast step
    tolerance: float = TOLERANCE  # keep a frame once (1 - tolerance) * frame_interval passed
    max_gap: float = MAX_GAP  # a gap above max_gap * frame_interval restarts the history

    def __post_init__(self) -> None:
        if not self.frame_interval > 0:
            raise ValueError(f"frame_interval must be > 0 s, got {self.frame_interval}")
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"gate_tolerance must be in [0, 1), got {self.tolerance}")
        if not self.max_gap > 1:
            raise ValueError(f"max_gap must be > 1 (frame intervals), got {self.max_gap}")

    @property
    def keep_after(self) -> float:
        """Seconds after the last kept frame from which a frame is kept."""
        return (1 - self.tolerance) * self.frame_interval

    @property
    def restart_after(self) -> float:
        """Seconds after the last kept frame beyond which the history restarts."""
        return self.max_gap * self.frame_interval


@dataclass(frozen=True)
class Verdict:
    """What became of one frame."""

    kept: bool
    starts: bool = False  # a kept frame that begins a history: the stream's first, or a restart
    restart: str | None = None  # why the history restarted here (None on the first frame)
    drop: str | None = None  # why a frame was not kept: GATED, or the intake's cause


KEPT = Verdict(kept=True)
FIRST = Verdict(kept=True, starts=True)


class FrameGate:
    """One stream's gate; see the module docstring for the rules."""

    def __init__(self, settings: GateSettings) -> None:
        self.settings = settings
        self.last_stamp: float | None = None  # of the last kept frame
        self.last_size: tuple[int, ...] | None = None  # of the last kept frame, when known

    def admit(self, stamp: float, size: tuple[int, ...] | None = None) -> Verdict:
        """The verdict on the next frame (size None: unknown, rule 2 does not apply)."""
        verdict = self._verdict(stamp, size)
        if verdict.kept:
            self.last_stamp = stamp
            self.last_size = size or self.last_size
        return verdict

    def _verdict(self, stamp: float, size: tuple[int, ...] | None) -> Verdict:
        if self.last_stamp is None:
            return FIRST
        if size is not None and self.last_size is not None and size != self.last_size:
            return Verdict(kept=True, starts=True, restart=RESOLUTION_CHANGED)
        elapsed = stamp - self.last_stamp
        if elapsed < 0:
            return Verdict(kept=True, starts=True, restart=STAMP_BACKWARDS)
        if elapsed > self.settings.restart_after:
            return Verdict(kept=True, starts=True, restart=GAP)
        if elapsed < self.settings.keep_after:
            return Verdict(kept=False, drop=GATED)
        return KEPT
