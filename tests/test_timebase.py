"""Instrument clocks onto the host time base: the offset and drift estimated from the lower
envelope of receive delays, the config override, and what a frame records of the raw clock."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.base import Adapter, AdapterConfig
from adapters.timebase import ClockConfig, ClockModel

HOST0 = 1_750_000_000_000_000_000


def _feed(model: ClockModel, offset_s: float, drift_ppm: float, seconds: int,
          instrument0_ns: int = 0, latency_s: float = 0.05, seed: int = 0) -> None:
    """One pair per second: host = instrument + offset + drift·t + a delay that is never
    negative (exponential, as buffering and file flushes make it)."""
    rng = np.random.default_rng(seed)
    for i in range(seconds):
        instrument = instrument0_ns + i * 10**9
        true_offset = offset_s + drift_ppm * 1e-6 * i
        host = HOST0 + instrument - instrument0_ns + int(round(true_offset * 1e9)) + \
            int(rng.exponential(latency_s) * 1e9)
        model.observe(instrument, host)


def _true_host(instrument_ns: int, instrument0_ns: int, offset_s: float, drift_ppm: float
               ) -> int:
    t = (instrument_ns - instrument0_ns) * 1e-9
    return HOST0 + instrument_ns - instrument0_ns + int(round((offset_s + drift_ppm * 1e-6 * t)
                                                              * 1e9))


@settings(max_examples=25, deadline=None)
@given(offset_s=st.floats(-3600, 3600), drift_ppm=st.floats(-200, 200),
       instrument0_ns=st.sampled_from([0, 10**9 * 3600, 1_600_000_000 * 10**9]))
def test_offset_and_drift_come_from_the_lower_envelope(offset_s: float, drift_ppm: float,
                                                       instrument0_ns: int) -> None:
    model = ClockModel()
    _feed(model, offset_s, drift_ppm, 3600, instrument0_ns)
    assert model.drift_ppm == pytest.approx(drift_ppm, abs=10)
    last = instrument0_ns + 3599 * 10**9
    error_s = (model.correct(last) - _true_host(last, instrument0_ns, offset_s, drift_ppm)) * 1e-9
    # the delays' lower envelope, not their mean (50 ms): within a few ms of the truth
    assert 0 <= error_s < 0.005


def test_a_config_offset_overrides_the_estimate() -> None:
    model = ClockModel(ClockConfig(offset_s=2.5, drift_ppm=50))
    assert model.mode == "fixed"
    _feed(model, 100.0, 0.0, 60)  # observations are ignored
    assert model.correct(0) == 2_500_000_000
    assert model.correct(1000 * 10**9) == 1000 * 10**9 + 2_500_000_000 + 50_000_000


def test_instrument_and_host_modes() -> None:
    assert ClockModel(ClockConfig(mode="instrument")).correct(123, host_ns=999) == 123
    assert ClockModel(ClockConfig(mode="host")).correct(123, host_ns=999) == 999


def test_make_frame_stamps_the_corrected_time_and_keeps_the_raw_clock() -> None:
    class Probe(Adapter):
        type_name = "probe"

        async def frames(self):  # not run here
            yield None

    adapter = Probe("exp/cell01/probe", AdapterConfig(clock=ClockConfig(offset_s=-1.0)))
    t = np.arange(10) * 0.1
    frame = adapter.make_frame("echem", 5 * 10**9, {"t": t, "voltage": np.full(10, 3.7)},
                               host_ns=HOST0)
    assert frame.validate().t0_ns == 4 * 10**9
    assert frame.meta["clock"] == {"instrument_t0_ns": 5 * 10**9, "mode": "fixed",
                                   "offset_s": -1.0, "drift_ppm": 0.0, "host_receive_ns": HOST0}
    again = adapter.make_frame("echem", 6 * 10**9, {"t": t}, host_ns=HOST0)
    other = adapter.make_frame("pressure", 6 * 10**9, {"t": t}, host_ns=HOST0)
    assert (frame.seq, again.seq, other.seq) == (0, 1, 0)  # seq per kind
