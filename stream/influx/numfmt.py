"""Line-protocol text in numba: floats exactly as Python's ``repr`` prints them (the shortest
digits that read back to the same double: the Ryu algorithm of Ulf Adams, PLDI 2018) with a
trailing ``.0`` left out as influxdb-client does, int64 in decimal, and whole lines from columns
(``render_lines``).

``format_floats`` and ``format_ints`` give Python strings (each value is written followed by a
NUL byte into one buffer, decoded once and split). NaN and infinities come out as ``nan``,
``inf`` and ``-inf`` there; ``render_lines`` leaves them out of the line.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_POW5_BITCOUNT = 125
_POW5_INV_BITCOUNT = 125


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Ryu's 5^i and 5^-i with 125 significant bits, as (low, high) 64-bit halves."""
    split = np.zeros((326, 2), dtype=np.uint64)
    for i in range(326):
        pow5 = 5**i
        shift = pow5.bit_length() - _POW5_BITCOUNT
        v = pow5 >> shift if shift >= 0 else pow5 << -shift
        split[i] = (v & _MASK64, v >> 64)
    inv = np.zeros((342, 2), dtype=np.uint64)
    for i in range(342):
        pow5 = 5**i
        v = (1 << (pow5.bit_length() - 1 + _POW5_INV_BITCOUNT)) // pow5 + 1
        inv[i] = (v & _MASK64, v >> 64)
    return split, inv


POW5_SPLIT, POW5_INV_SPLIT = _tables()
_ZERO = _U64(0)
_ONE = _U64(1)
_TWO = _U64(2)
_FOUR = _U64(4)
_FIVE = _U64(5)
_TEN = _U64(10)
_HUNDRED = _U64(100)
_LOW32 = _U64(0xFFFFFFFF)
_S32 = _U64(32)
_S64 = _U64(64)
_MANTISSA_MASK = _U64((1 << 52) - 1)
_HIDDEN_BIT = _U64(1 << 52)
_SIGN_BIT = _U64(1 << 63)


@nb.njit(inline="always", cache=True)
def _umul128(a: np.uint64, b: np.uint64) -> tuple[np.uint64, np.uint64]:
    a_lo, a_hi = a & _LOW32, a >> _S32
    b_lo, b_hi = b & _LOW32, b >> _S32
    b00 = a_lo * b_lo
    b01 = a_lo * b_hi
    b10 = a_hi * b_lo
    b11 = a_hi * b_hi
    mid1 = b10 + (b00 >> _S32)
    mid2 = b01 + (mid1 & _LOW32)
    hi = b11 + (mid1 >> _S32) + (mid2 >> _S32)
    lo = (mid2 << _S32) | (b00 & _LOW32)
    return lo, hi


@nb.njit(inline="always", cache=True)
def _mul_shift(m: np.uint64, mul_lo: np.uint64, mul_hi: np.uint64, j: int) -> np.uint64:
    """((m * mul) >> j) for a 128-bit ``mul``, 64 < j < 128."""
    lo1, hi1 = _umul128(m, mul_lo)
    lo2, hi2 = _umul128(m, mul_hi)
    total = hi1 + lo2
    high = hi2 + (_ONE if total < hi1 else _ZERO)
    dist = _U64(j - 64)
    return (high << (_S64 - dist)) | (total >> dist)


@nb.njit(inline="always", cache=True)
def _pow5bits(e: int) -> int:
    return ((e * 1217359) >> 19) + 1


@nb.njit(inline="always", cache=True)
def _pow5_factor(v: np.uint64) -> int:
    count = 0
    while v % _FIVE == _ZERO:
        v //= _FIVE
        count += 1
    return count


@nb.njit(inline="always", cache=True)
def _drop_digit(vr: np.uint64, vp: np.uint64, vm: np.uint64
                ) -> tuple[np.uint64, np.uint64, np.uint64, int]:
    return vr // _TEN, vp // _TEN, vm // _TEN, int(vr % _TEN)


@nb.njit(cache=True)
def shortest(bits: np.uint64) -> tuple[np.uint64, int]:
    """Ryu's d2d: the shortest decimal ``mantissa * 10**exponent`` that reads back as the
    (finite, non-zero) double with these IEEE bits, nearest the exact value."""
    ieee_mantissa = bits & _MANTISSA_MASK
    ieee_exponent = int((bits >> _U64(52)) & _U64(0x7FF))
    if ieee_exponent == 0:
        e2 = 1 - 1023 - 52 - 2
        m2 = ieee_mantissa
    else:
        e2 = ieee_exponent - 1023 - 52 - 2
        m2 = _HIDDEN_BIT | ieee_mantissa
    accept_bounds = (m2 & _ONE) == _ZERO
    mv = _FOUR * m2
    mm_shift = _ONE if (ieee_mantissa != _ZERO or ieee_exponent <= 1) else _ZERO
    vm_trailing_zeros = False
    vr_trailing_zeros = False
    if e2 >= 0:
        q = ((e2 * 78913) >> 18) - (1 if e2 > 3 else 0)
        e10 = q
        k = _POW5_INV_BITCOUNT + _pow5bits(q) - 1
        i = -e2 + q + k
        lo, hi = POW5_INV_SPLIT[q, 0], POW5_INV_SPLIT[q, 1]
        vr = _mul_shift(_FOUR * m2, lo, hi, i)
        vp = _mul_shift(_FOUR * m2 + _TWO, lo, hi, i)
        vm = _mul_shift(_FOUR * m2 - _ONE - mm_shift, lo, hi, i)
        if q <= 21:
            if mv % _FIVE == _ZERO:
                vr_trailing_zeros = _pow5_factor(mv) >= q
            elif accept_bounds:
                vm_trailing_zeros = _pow5_factor(mv - _ONE - mm_shift) >= q
            elif _pow5_factor(mv + _TWO) >= q:
                vp -= _ONE
    else:
        q = ((-e2 * 732923) >> 20) - (1 if -e2 > 1 else 0)
        e10 = q + e2
        i = -e2 - q
        k = _pow5bits(i) - _POW5_BITCOUNT
        j = q - k
        lo, hi = POW5_SPLIT[i, 0], POW5_SPLIT[i, 1]
        vr = _mul_shift(_FOUR * m2, lo, hi, j)
        vp = _mul_shift(_FOUR * m2 + _TWO, lo, hi, j)
        vm = _mul_shift(_FOUR * m2 - _ONE - mm_shift, lo, hi, j)
        if q <= 1:
            vr_trailing_zeros = True
            if accept_bounds:
                vm_trailing_zeros = mm_shift == _ONE
            else:
                vp -= _ONE
        elif q < 63:
            vr_trailing_zeros = (mv & ((_ONE << _U64(q)) - _ONE)) == _ZERO
    removed = 0
    last_removed = 0
    if vm_trailing_zeros or vr_trailing_zeros:  # the general case (rare)
        while vp // _TEN > vm // _TEN:
            vm_trailing_zeros &= vm % _TEN == _ZERO
            vr_trailing_zeros &= last_removed == 0
            vr, vp, vm, last_removed = _drop_digit(vr, vp, vm)
            removed += 1
        if vm_trailing_zeros:
            while vm % _TEN == _ZERO:
                vr_trailing_zeros &= last_removed == 0
                vr, vp, vm, last_removed = _drop_digit(vr, vp, vm)
                removed += 1
        if vr_trailing_zeros and last_removed == 5 and vr % _TWO == _ZERO:
            last_removed = 4  # round half to even
        up = (vr == vm and (not accept_bounds or not vm_trailing_zeros)) or last_removed >= 5
        output = vr + (_ONE if up else _ZERO)
    else:
        round_up = False
        if vp // _HUNDRED > vm // _HUNDRED:
            round_up = vr % _HUNDRED >= _U64(50)
            vr //= _HUNDRED
            vp //= _HUNDRED
            vm //= _HUNDRED
            removed += 2
        while vp // _TEN > vm // _TEN:
            round_up = vr % _TEN >= _FIVE
            vr //= _TEN
            vp //= _TEN
            vm //= _TEN
            removed += 1
        output = vr + (_ONE if (vr == vm or round_up) else _ZERO)
    return output, e10 + removed


@nb.njit(inline="always", cache=True)
def _put3(buf: np.ndarray, pos: int, a: int, b: int, c: int) -> int:
    buf[pos] = a
    buf[pos + 1] = b
    buf[pos + 2] = c
    return pos + 3


@nb.njit(cache=True)
def _write_float(buf: np.ndarray, pos: int, x: float, bits: np.uint64,
                 digits: np.ndarray) -> int:
    """``repr(x)`` without a trailing ``.0`` (influxdb-client's float text) at ``buf[pos:]``;
    ``bits`` are the IEEE bits of ``x``, ``digits`` a scratch array of 17 bytes."""
    if x != x:
        return _put3(buf, pos, 110, 97, 110)  # nan
    if (bits & _SIGN_BIT) != _ZERO:
        buf[pos] = 45  # '-'
        pos += 1
    if x == np.inf or x == -np.inf:
        return _put3(buf, pos, 105, 110, 102)  # inf
    if x == 0.0:
        buf[pos] = 48
        return pos + 1
    mantissa, exponent = shortest(bits)
    n = 0
    while mantissa > _ZERO:
        digits[n] = 48 + int(mantissa % _TEN)
        mantissa //= _TEN
        n += 1
    decpt = n + exponent  # digits d1 d2 ... with the point after decpt of them
    if decpt <= -4 or decpt > 16:  # Python's repr switches to exponent form
        buf[pos] = digits[n - 1]
        pos += 1
        if n > 1:
            buf[pos] = 46
            pos += 1
            for k in range(n - 2, -1, -1):
                buf[pos] = digits[k]
                pos += 1
        buf[pos] = 101  # 'e'
        e = decpt - 1
        buf[pos + 1] = 45 if e < 0 else 43
        pos += 2
        e = -e if e < 0 else e
        if e >= 100:
            buf[pos] = 48 + e // 100
            pos += 1
        buf[pos] = 48 + (e // 10) % 10
        buf[pos + 1] = 48 + e % 10
        return pos + 2
    if decpt <= 0:
        buf[pos] = 48
        buf[pos + 1] = 46
        pos += 2
        for _ in range(-decpt):
            buf[pos] = 48
            pos += 1
        for k in range(n - 1, -1, -1):
            buf[pos] = digits[k]
            pos += 1
        return pos
    for k in range(n - 1, -1, -1):
        if n - 1 - k == decpt:
            buf[pos] = 46
            pos += 1
        buf[pos] = digits[k]
        pos += 1
    for _ in range(decpt - n):  # an integral value: no ".0"
        buf[pos] = 48
        pos += 1
    return pos


@nb.njit(cache=True)
def floats_to_bytes(values: np.ndarray) -> np.ndarray:
    """Every value as influxdb-client's float text, each followed by a NUL byte."""
    buf = np.empty(values.shape[0] * 26, dtype=np.uint8)
    bits = values.view(np.uint64)
    digits = np.empty(17, dtype=np.uint8)
    pos = 0
    for i in range(values.shape[0]):
        pos = _write_float(buf, pos, values[i], bits[i], digits)
        buf[pos] = 0
        pos += 1
    return buf[:pos]


@nb.njit(inline="always", cache=True)
def _write_int(buf: np.ndarray, pos: int, v: np.int64, digits: np.ndarray) -> int:
    if v < 0:
        buf[pos] = 45
        pos += 1
        u = _U64(-(v + 1)) + _ONE  # also right for -2**63
    else:
        u = _U64(v)
    n = 0
    while True:
        digits[n] = 48 + int(u % _TEN)
        u //= _TEN
        n += 1
        if u == _ZERO:
            break
    for k in range(n - 1, -1, -1):
        buf[pos] = digits[k]
        pos += 1
    return pos


@nb.njit(cache=True)
def ints_to_bytes(values: np.ndarray) -> np.ndarray:
    """Every int64 in decimal, each followed by a NUL byte."""
    buf = np.empty(values.shape[0] * 21, dtype=np.uint8)
    digits = np.empty(20, dtype=np.uint8)
    pos = 0
    for i in range(values.shape[0]):
        pos = _write_int(buf, pos, values[i], digits)
        buf[pos] = 0
        pos += 1
    return buf[:pos]


FLOAT, INT, BOOL, TEXT = 0, 1, 2, 3  # column kinds of render_lines


@nb.njit(cache=True)
def render_lines(buf: np.ndarray, prefix: np.ndarray, keys: np.ndarray, key_end: np.ndarray,
                 kinds: np.ndarray, index: np.ndarray, floats: np.ndarray, ints: np.ndarray,
                 blob: np.ndarray, text_start: np.ndarray, text_end: np.ndarray,
                 ts: np.ndarray) -> tuple[int, int]:
    """Write one line per row into ``buf``: ``prefix``, the present fields in column order
    (' ' before the first, ',' before the others), ' ', the timestamp, '\\n'.

    Column j is ``keys[key_end[j-1]:key_end[j]]`` (the escaped key and '=') and, by
    ``kinds[j]``: FLOAT ``floats[row, index[j]]`` (absent when NaN or infinite), INT
    ``ints[row, index[j]]`` with the ``i`` suffix, BOOL ``ints[row, index[j]]`` as true/false,
    TEXT ``blob[text_start[index[j], row]:text_end[...]]`` (absent when the start is negative).
    A row without any present field is not written. Returns (bytes used, lines written)."""
    digits = np.empty(20, dtype=np.uint8)
    fbits = floats.view(np.uint64)
    pos = 0
    lines = 0
    for r in range(ts.shape[0]):
        start = pos
        for b in range(prefix.shape[0]):
            buf[pos + b] = prefix[b]
        pos += prefix.shape[0]
        first = True
        key_start = 0
        for j in range(kinds.shape[0]):
            kind = kinds[j]
            c = index[j]
            k0 = key_start
            key_start = key_end[j]
            if kind == 0:
                x = floats[r, c]
                if x != x or x == np.inf or x == -np.inf:
                    continue
            elif kind == 3 and text_start[c, r] < 0:
                continue
            buf[pos] = 32 if first else 44
            pos += 1
            first = False
            for b in range(k0, key_end[j]):
                buf[pos] = keys[b]
                pos += 1
            if kind == 0:
                pos = _write_float(buf, pos, floats[r, c], fbits[r, c], digits)
            elif kind == 1:
                pos = _write_int(buf, pos, ints[r, c], digits)
                buf[pos] = 105  # 'i'
                pos += 1
            elif kind == 2:
                if ints[r, c]:
                    pos = _put3(buf, pos, 116, 114, 117)  # tru
                else:
                    pos = _put3(buf, pos, 102, 97, 108)  # fal
                    buf[pos] = 115  # s
                    pos += 1
                buf[pos] = 101  # e
                pos += 1
            else:
                for b in range(text_start[c, r], text_end[c, r]):
                    buf[pos] = blob[b]
                    pos += 1
        if first:
            pos = start
            continue
        buf[pos] = 32
        pos = _write_int(buf, pos + 1, ts[r], digits)
        buf[pos] = 10
        pos += 1
        lines += 1
    return pos, lines


def _split(buf: np.ndarray) -> list[str]:
    text = buf.tobytes().decode("ascii").split("\x00")
    text.pop()
    return text


def format_floats(values: np.ndarray) -> list[str]:
    """Float text for each value (float64 or convertible), as influxdb-client writes it."""
    return _split(floats_to_bytes(np.ascontiguousarray(values, dtype=np.float64)))


def format_ints(values: np.ndarray) -> list[str]:
    """Decimal text for each int64."""
    return _split(ints_to_bytes(np.ascontiguousarray(values, dtype=np.int64)))
