from __future__ import annotations

from stream.sequence import SequenceTracker

from .helpers import echem_frame


def _feed(seqs: list[int]) -> tuple[SequenceTracker, list[bool]]:
    tr = SequenceTracker()
    return tr, [tr.observe(echem_frame(seq=s)) for s in seqs]


def test_in_order_has_no_loss() -> None:
    tr, kept = _feed(list(range(100)))
    assert tr.lost == 0 and tr.duplicates == 0 and all(kept)


def test_gap_is_counted() -> None:
    tr, _ = _feed([0, 1, 2, 5, 6, 10])
    assert tr.lost == 5


def test_late_frame_fills_gap_and_duplicate_is_dropped() -> None:
    tr, kept = _feed([0, 1, 3, 2, 3, 4])
    assert tr.lost == 0 and tr.late == 1 and tr.duplicates == 1
    assert kept == [True, True, True, True, False, True]


def test_publisher_restart_is_not_a_duplicate() -> None:
    tr = SequenceTracker()
    first = [echem_frame(seq=s) for s in range(4)]
    restarted = [echem_frame(seq=s, t0_ns=1_800_000_000_000_000_000) for s in range(2)]
    kept = [tr.observe(f) for f in first + restarted]
    st = next(iter(tr.streams.values()))
    assert st.restarts == 1 and all(kept) and tr.lost == 0


def test_resent_start_of_stream_is_duplicate_not_restart() -> None:
    tr, kept = _feed([0, 1, 2, 3, 4, 5, 0, 1, 2, 6])
    st = next(iter(tr.streams.values()))
    assert st.restarts == 0 and tr.duplicates == 3 and tr.lost == 0
    assert kept == [True] * 6 + [False] * 3 + [True]


def test_streams_and_kinds_are_tracked_separately() -> None:
    tr = SequenceTracker()
    for s in range(3):
        tr.observe(echem_frame(seq=s, stream="e/c1/p"))
        tr.observe(echem_frame(seq=s, stream="e/c2/p"))
    assert tr.lost == 0 and len(tr.streams) == 2
