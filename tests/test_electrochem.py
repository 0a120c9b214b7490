"""Electrochemistry on real data: capacities per half cycle against EC-Lab's own columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adapters.biologic import MptError, read_mpt
from processors.electrochem import ElectrochemProcessor
from stream.frame import Frame

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
GCPL = REAL / "potentiostat" / "gcpl.pr_182.1.mpt"


def _frames(arrays: dict, block: int, meta: dict) -> list[Frame]:
    t = arrays["t"]
    frames = []
    for k, s in enumerate(range(0, t.size, block)):
        sl = slice(s, min(t.size, s + block))
        frames.append(Frame("lab/cell1/potentiostat", "echem", k, int(round(t[s] * 1e9)),
                            {"t": t[sl] - t[s], "voltage": arrays["voltage"][sl],
                             "current": arrays["current"][sl]}, {}, meta))
    return frames


@pytest.mark.skipif(not GCPL.exists(), reason=f"real data not found at {GCPL}")
@pytest.mark.parametrize("block", [1, 37, 500])
def test_half_cycle_capacities_match_ec_lab_within_half_a_percent(block: int) -> None:
    data = read_mpt(GCPL)
    assert not data.errors and len(data.data["time/s"]) == 2533  # every data line of the file
    arrays, _ = data.standard()
    proc = ElectrochemProcessor()
    out = [r for f in _frames(arrays, block, {"current_kind": "interval_mean"})
           for r in proc.process(f)] + proc.flush()
    ours = [(int(f.arrays["direction"][0]), f.arrays["capacity_Ah"][0] * 1e3)
            for f in out if f.kind == "result.half_cycle"]
    ec_lab = []
    for h in np.unique(arrays["half_cycle"]):
        m = arrays["half_cycle"] == h
        q_ch, q_dis = arrays["q_charge_Ah"][m][-1] * 1e3, arrays["q_discharge_Ah"][m][-1] * 1e3
        ec_lab.append((1, q_ch) if q_ch > 0 else (-1, q_dis))
    assert len(ours) == len(ec_lab) == 8
    for (d_ours, q_ours), (d_ref, q_ref) in zip(ours, ec_lab, strict=True):
        assert d_ours == d_ref
        assert q_ours == pytest.approx(q_ref, rel=0.005)
    cycles = [f for f in out if f.kind == "result.cycle"]
    assert cycles  # discharge-first half cell: a cycle closes at every discharge after a charge


@pytest.mark.skipif(not GCPL.exists(), reason=f"real data not found at {GCPL}")
def test_trapezoid_on_interval_means_is_measurably_off() -> None:
    """Why the current kind matters: integrating EC-Lab's <I> as instantaneous samples misses
    the reference by more than the 0.5 % allowed."""
    arrays, _ = read_mpt(GCPL).standard()
    proc = ElectrochemProcessor()
    out = [r for f in _frames(arrays, 50, {}) for r in proc.process(f)]
    first_charge = next(f for f in out if f.kind == "result.half_cycle"
                        and f.arrays["direction"][0] == 1)
    assert abs(first_charge.arrays["capacity_Ah"][0] * 1e3 / 2.61607 - 1) > 0.005


def test_mpt_reader_decimal_comma_cp1252_and_bad_rows(tmp_path: Path) -> None:
    text = ("EC-Lab ASCII FILE\r\nNb header lines : 4\r\nAcquisition started on : x\r\n"
            "time/s\tEwe/V\t<I>/mA\tQ charge/mA.h\tTemperature/°C\r\n"
            "0,0\t3,1\t0,5\t0,0\t25,0\r\n"
            "1,0\t3,2\t0,5\r\n"
            "2,0\tx\t0,5\t0,1\t25,0\r\n"
            "3,0\t3,3\t0,5\t0,2\t25,1\r\n")
    path = tmp_path / "comma.mpt"
    path.write_bytes(text.encode("cp1252"))
    data = read_mpt(path)
    arrays, units = data.standard()
    np.testing.assert_allclose(arrays["voltage"], [3.1, 3.3])
    np.testing.assert_allclose(arrays["current"], [5e-4, 5e-4])
    assert units["temperature"] == "degC" and arrays["temperature"][1] == 25.1
    assert len(data.errors) == 2
    assert "line 6" in data.errors[0] and "3 fields" in data.errors[0]
    assert "line 7" in data.errors[1] and "'Ewe/V'" in data.errors[1]
    path.write_text("not an mpt\n")
    with pytest.raises(MptError, match="line 1"):
        read_mpt(path)
