"""Sequence tracking: every receiver exposes lost, duplicated and reordered frames per stream.

``seq`` counts frames per (stream, kind), i.e. per topic, from 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .frame import Frame

# How far behind the newest seq a frame may arrive and still fill a gap. Beyond it, a lower
# seq means the publisher restarted and counts from 0 again.
REORDER_WINDOW = 4096


@dataclass(slots=True)
class StreamSeqStats:
    last: int = -1
    received: int = 0
    lost: int = 0          # seq numbers skipped and not (yet) seen
    late: int = 0          # arrived after a later seq, filling a gap
    duplicates: int = 0
    restarts: int = 0
    first_t0_ns: int | None = None   # t0 of seq 0: tells a restart from a re-sent seq 0
    missing: set[int] = field(default_factory=set)


class SequenceTracker:
    """Per-(stream, kind) loss, reorder and duplicate detection. O(1) per frame."""

    def __init__(self) -> None:
        self.streams: dict[tuple[str, str], StreamSeqStats] = {}

    def observe(self, frame: Frame) -> bool:
        """Record a frame; returns False if it is a duplicate that should be dropped."""
        key = (frame.stream, frame.kind)
        st = self.streams.get(key)
        if st is None:
            st = self.streams[key] = StreamSeqStats()
        seq = frame.seq
        st.received += 1
        if seq == 0 and st.last >= 0 and frame.t0_ns != st.first_t0_ns:
            st.restarts += 1  # the publisher started again from 0
            st.last = -1
            st.missing.clear()
        if seq == 0:
            st.first_t0_ns = frame.t0_ns
        if seq == st.last + 1 or st.last < 0:
            st.last = seq
            return True
        if seq > st.last:
            skipped = seq - st.last - 1
            st.lost += skipped
            if skipped <= REORDER_WINDOW:
                st.missing.update(range(st.last + 1, seq))
                if len(st.missing) > REORDER_WINDOW:
                    floor = seq - REORDER_WINDOW
                    st.missing = {s for s in st.missing if s >= floor}
            st.last = seq
            return True
        if seq in st.missing:
            st.missing.discard(seq)
            st.lost -= 1
            st.late += 1
            return True
        if st.last - seq > REORDER_WINDOW:
            st.restarts += 1
            st.last = seq
            st.missing.clear()
            return True
        st.duplicates += 1
        return False

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.streams.values())

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.streams.values())

    @property
    def late(self) -> int:
        return sum(s.late for s in self.streams.values())

    def report(self) -> dict[str, dict[str, int]]:
        return {
            f"{stream} [{kind}]": {"received": s.received, "lost": s.lost, "late": s.late,
                                   "duplicates": s.duplicates, "restarts": s.restarts}
            for (stream, kind), s in sorted(self.streams.items())
        }
