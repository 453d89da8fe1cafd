"""A vectorised pre-pass over a batch of phone values: the clean, valid NANPA numbers.

Most rows of a do-not-call list are a 10-digit US number with some punctuation.
For those, :func:`batch_cancel.plan.phones.normalise` is a digit split plus two
regex matches, and doing that per row in Python is what made planning slow.
Here the same steps run over a whole Arrow array in C++ (RE2):

* only values made of ASCII digits, spaces, tabs and ``( ) . / + -`` qualify,
  and not ones starting ``00`` (an international prefix, resolved per region);
* ``2125550134.0`` loses its float tail, punctuation is dropped, and what is
  left must be ``[+1 | 1]`` + ``[2-9]`` + 9 digits, as ``phones._fast_split`` wants;
* the NSN must be valid for the US (``phones.us_ten_digit_patterns``).

A row that passes gets exactly what ``normalise`` would answer for a NANPA
region; every other row (Canadian numbers, invalid ones, extensions, non-NANPA
regions, junk) is left to ``normalise``, so no answer depends on this module.
tests/test_plan_fast.py compares the two on generated values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_cancel.plan.phones import PhoneFormat, us_ten_digit_patterns

__all__ = ["FastPhones", "fast_nanpa"]

_CLEAN = r"^[0-9 \t()./+-]+$"
_FLOAT_TAIL = r"^(\+?[0-9]+)\.0+$"
_PUNCTUATION = np.zeros(256, dtype=bool)
_PUNCTUATION[[ord(c) for c in " \t()./-"]] = True
_NANPA_SHAPE = r"^(?:\+1|1)?[2-9][0-9]{9}$"


@dataclass(frozen=True)
class FastPhones:
    ok: pa.BooleanArray  # True: e164/sent below are normalise()'s answer, with no warning
    e164: pa.Array  # "+1" + NSN where ok, else null
    sent: pa.Array  # the form sent to GWS where ok, else null


@functools.cache
def _validity() -> tuple[str, str] | None:
    patterns = us_ten_digit_patterns()
    if patterns is None:
        return None
    anchored = (f"^(?:{patterns[0]})$", f"^(?:{patterns[1]})$")
    try:  # RE2 rejects a few Python-only constructs; then everything takes the slow path
        for pattern in anchored:
            pc.match_substring_regex(pa.array(["2125550134"]), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return anchored


def _without_punctuation(arr: pa.Array) -> pa.Array:
    """The strings with ``_PUNCTUATION`` bytes dropped; a regex replace is 10x slower.

    Only ASCII bytes are dropped, and those never occur inside a multi-byte
    UTF-8 character, so the result is valid UTF-8 whatever the input.
    """
    arr = pa.concat_arrays([arr]) if arr.offset else arr  # buffers start at row 0
    validity, offsets_buf, data_buf = arr.buffers()
    if data_buf is None or len(arr) == 0:
        return arr
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[:len(arr) + 1].astype(np.int64)
    data = np.frombuffer(data_buf, dtype=np.uint8)[:offsets[-1]]
    keep = ~_PUNCTUATION[data]
    kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    new_offsets = kept_before[offsets].astype(np.int32)
    return pa.StringArray.from_buffers(len(arr), pa.py_buffer(new_offsets),
                                       pa.py_buffer(data[keep]), validity, arr.null_count)


def _without_float_tail(raw: pa.Array) -> pa.Array:
    """2125550134.0 -> 2125550134; the regex runs only on values with ".0" in them."""
    candidates = pc.fill_null(pc.match_substring(raw, ".0"), False)
    if not pc.any(candidates).as_py():
        return raw
    fixed = pc.replace_substring_regex(raw.filter(candidates), _FLOAT_TAIL, r"\1")
    return pc.replace_with_mask(raw, candidates, fixed)


def fast_nanpa(raw: pa.Array, nanpa_region: pa.Array | bool, fmt: PhoneFormat) -> FastPhones:
    """Answer the rows ``normalise(raw, region, fmt, strict)`` would pass untouched.

    ``raw`` is the trimmed text (null for blank); ``nanpa_region`` says, per row
    or for all, whether the row's region has country code +1. ``strict`` does not
    matter: only valid numbers are answered here.
    """
    patterns = _validity()
    null = pa.nulls(len(raw), pa.string())
    if patterns is None or nanpa_region is False or len(raw) == 0:
        return FastPhones(pa.array([False] * len(raw), pa.bool_()), null, null)
    if raw.type != pa.string():
        raw = raw.cast(pa.string())
    compact = _without_punctuation(_without_float_tail(raw))
    nsn = pc.utf8_slice_codeunits(compact, -10)
    ok = pc.and_kleene(pc.match_substring_regex(raw, _CLEAN),
                       pc.invert(pc.starts_with(raw, "00")))
    ok = pc.and_kleene(ok, pc.match_substring_regex(compact, _NANPA_SHAPE))
    if nanpa_region is not True:
        ok = pc.and_kleene(ok, nanpa_region)
    for pattern in patterns:
        ok = pc.and_kleene(ok, pc.match_substring_regex(nsn, pattern))
    ok = pc.fill_null(ok, False)
    e164 = pc.if_else(ok, pc.binary_join_element_wise("+1", nsn, ""), null)
    if fmt is PhoneFormat.NATIONAL:
        sent = pc.if_else(ok, nsn, null)
    elif fmt is PhoneFormat.E164:
        sent = e164
    elif fmt is PhoneFormat.DIGITS:
        sent = pc.if_else(ok, pc.binary_join_element_wise("1", nsn, ""), null)
    else:  # as-is: the value as written, trimmed (for ok rows only ASCII spaces and tabs)
        sent = pc.if_else(ok, pc.utf8_trim_whitespace(raw), null)
    return FastPhones(ok, e164, sent)
