"""Phone hygiene: turn whatever a spreadsheet holds into the number GWS is sent.

``phonenumbers.parse`` plus ``is_valid_number`` costs ~100 µs a call, which
alone would blow the 20 s budget for a million-row file. Two things make it
cheap without changing a single answer (tests/test_phones.py compares both
paths on generated numbers):

* clean NANPA shapes (10 digits, 1 + 10 digits, +1 + 10 digits, with the usual
  punctuation) skip ``parse``: for them parse is a pure digit split;
* validity is the same metadata regexes ``is_valid_number`` runs, but compiled
  once and merged per number length, so it is two regex calls instead of ~20
  plus phonenumbers' per-call pattern lookups.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, NumberParseException, PhoneMetadata

__all__ = ["NANPA_REGIONS", "ForeignFormat", "Phone", "PhoneFormat", "mask", "normalise",
           "region_ok", "us_ten_digit_patterns"]


class PhoneFormat(StrEnum):
    NATIONAL = "national"
    E164 = "e164"
    DIGITS = "digits"
    AS_IS = "as-is"


class ForeignFormat(StrEnum):
    """How a number whose country code is not its row's region's is sent.

    Its national form would dial another subscriber at home (``+44 20 7946 0958``
    from a US row is ``2079460958``, a number in Maine), so it is sent whole or
    not at all. ``None`` (the default) follows ``PhoneFormat``: ``e164`` and
    ``digits`` keep the country already; ``national`` rejects; ``as-is`` sends
    the text when it names the country by itself (``+44 …``, ``011 44 …`` in a
    US row) and rejects it otherwise (``0044 …`` in a US row).
    """

    REJECT = "reject"
    E164 = "e164"
    DIGITS = "digits"  # country code and number, no "+": 442079460958
    INTERNATIONAL = "international"  # the region's international prefix first: 011442079460958


@dataclass(frozen=True, slots=True)
class Phone:
    e164: str | None
    sent: str | None
    error: str | None
    warning: str | None


# A BOM survives as U+FEFF when the file was decoded as UTF-8 but the BOM sat
# mid-file (concatenated exports), and as "ï»¿" when decoded as Latin-1.
_BOM_REMNANTS = ("\ufeff", "ï»¿", "\ufffe")
_UNICODE_SPACES = str.maketrans(
    {"\xa0": " ", "\u2007": " ", "\u202f": " ", "\u200b": None, "\u200c": None,
     "\u200d": None, "\u2060": None, "\ufeff": None}
)
# "2125550134.0" from a numeric column; "2125550134,0" from a European spreadsheet
_FLOAT_ARTIFACT = re.compile(r"(\+?\d+)[.,]0+")
# A spreadsheet's number format with thousands separators: one number, not four.
_THOUSANDS = re.compile(r"\+?\d{1,3}(?:,\d{3})+(?:\.0+)?")
# Several numbers in one cell: these always separate; "/" only after a whole number
# ("212/555-0134" and "030/1234567" are one number each).
_SEPARATORS = re.compile(r"\s*(?:[;,|&\n]|\s(?:or|and)\s)\s*", re.IGNORECASE)
_EXTENSION_PART = re.compile(r"(?:x|ext|extn|extension|ext=|#)\.?\s*\d+#?", re.IGNORECASE)
# A number followed by a label in letters: "(212) 555-0139 (cell)", "2125550139 - home".
_LABELLED = re.compile(r"(?P<number>[^A-Za-z]*\d[^A-Za-z]*?)[\s,;:-]*[(\[]?\s*"
                       r"(?P<label>[A-Za-z][A-Za-z .'-]*?)\s*[)\]]?\s*")
# The leading run of digits and phone punctuation, for "text after the number".
_LEADING_NUMBER = re.compile(r"[\s+(\[]*\d[\d\s().\-/\[\]]*")
SEVERAL_NUMBERS = "several numbers in one cell"
TEXT_AFTER = "text after the number"
# "2.12556E+09", or "2,12556E+09" with a European decimal comma
_SCIENTIFIC = re.compile(r"\+?\d+(?:[.,]\d+)?[eE]\+?\d+")
_NANPA_FIRST = frozenset("23456789")
# Module constants: attribute access on an enum class costs ~0.2 µs a time.
_NATIONAL, _E164, _DIGITS = PhoneFormat.NATIONAL, PhoneFormat.E164, PhoneFormat.DIGITS

_PARSE_REASONS = {
    NumberParseException.INVALID_COUNTRY_CODE: "unknown country code",
    NumberParseException.NOT_A_NUMBER: "not a phone number",
    NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
    NumberParseException.TOO_SHORT_NSN: "too short",
    NumberParseException.TOO_LONG: "too long",
}
_LENGTH_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short",
    phonenumbers.ValidationResult.TOO_LONG: "too long",
    phonenumbers.ValidationResult.INVALID_LENGTH: "wrong number of digits",
    phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY: "local number without area code",
}


# Regions whose country code is +1: a clean 10-digit number means the same in all of them.
NANPA_REGIONS = frozenset(COUNTRY_CODE_TO_REGION_CODE[1]) & phonenumbers.SUPPORTED_REGIONS


def region_ok(code: str) -> bool:
    """True for a region phonenumbers knows ("US", "gb"); case does not matter."""
    return code.strip().upper() in phonenumbers.SUPPORTED_REGIONS


@functools.cache
def _region_info(region: str) -> tuple[str, int, re.Pattern[str] | None] | None:
    """Upper-cased code, country code and international-prefix pattern; None if unknown."""
    code = region.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        return None
    meta = PhoneMetadata.metadata_for_region(code)
    idd = meta.international_prefix if meta is not None else None
    return code, phonenumbers.country_code_for_region(code), re.compile(idd) if idd else None


def _metadata(region: str, cc: int) -> PhoneMetadata | None:
    if region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
        return PhoneMetadata.metadata_for_nongeo_region(cc)
    return PhoneMetadata.metadata_for_region(region)


def _typed_patterns(meta: PhoneMetadata) -> list[tuple[frozenset[int], str]]:
    descs = [meta.premium_rate, meta.toll_free, meta.shared_cost, meta.voip,
             meta.personal_number, meta.pager, meta.uan, meta.voicemail, meta.fixed_line]
    if not meta.same_mobile_and_fixed_line_pattern:
        descs.append(meta.mobile)
    return [(frozenset(d.possible_length), d.national_number_pattern)
            for d in descs if d is not None and d.national_number_pattern]


def _merged_pattern(typed: list[tuple[frozenset[int], str]], n: int) -> str | None:
    # An empty length set means "as the general description" (phonenumbers' rule).
    pats = [p for lengths, p in typed if not lengths or n in lengths]
    return "|".join(f"(?:{p})" for p in pats) if pats else None


def _type_checker(meta: PhoneMetadata) -> Callable[[str], bool]:
    """``_number_type_helper(nsn, meta) != UNKNOWN``, with compiled patterns."""
    general = meta.general_desc
    if general is None or not general.national_number_pattern:
        return lambda nsn: False
    typed = _typed_patterns(meta)
    general_lengths = frozenset(general.possible_length)
    general_re = re.compile(general.national_number_pattern)
    by_length: dict[int, re.Pattern[str] | None] = {}

    def check(nsn: str) -> bool:
        n = len(nsn)
        if general_lengths and n not in general_lengths:
            return False
        if general_re.fullmatch(nsn) is None:
            return False
        try:
            merged = by_length[n]
        except KeyError:
            pattern = _merged_pattern(typed, n)
            merged = by_length[n] = re.compile(pattern) if pattern else None
        return merged is not None and merged.fullmatch(nsn) is not None

    return check


def us_ten_digit_patterns() -> tuple[str, str] | None:
    """Two patterns a 10-digit NSN must both fully match to be valid for +1.

    That is ``_validator(1)`` for the numbers it accepts: the US comes first for
    +1 and has no leading-digits filter, so a number valid for the US is valid
    for +1 whatever other NANPA region it might also be. A number they reject
    may still be valid elsewhere in NANPA (Canada): callers fall back to
    :func:`normalise` for those. None when the metadata is not shaped that way.
    """
    meta = PhoneMetadata.metadata_for_region("US")
    if meta is None or meta.leading_digits or COUNTRY_CODE_TO_REGION_CODE[1][0] != "US":
        return None
    general = meta.general_desc
    if general is None or not general.national_number_pattern:
        return None
    if general.possible_length and 10 not in general.possible_length:
        return None
    merged = _merged_pattern(_typed_patterns(meta), 10)
    return (general.national_number_pattern, merged) if merged else None


@functools.cache
def _validator(cc: int) -> Callable[[str], bool]:
    """``is_valid_number`` for a country code: first region by leading digits or type."""
    regions: list[tuple[re.Pattern[str] | None, Callable[[str], bool]]] = []
    for region in COUNTRY_CODE_TO_REGION_CODE.get(cc, ()):
        meta = _metadata(region, cc)
        if meta is not None:
            lead = re.compile(meta.leading_digits) if meta.leading_digits else None
            regions.append((lead, _type_checker(meta)))
    if len(regions) == 1:
        return regions[0][1]

    def valid(nsn: str) -> bool:
        for lead, check in regions:
            if lead is not None:
                if lead.match(nsn):
                    return check(nsn)
            elif check(nsn):
                return True
        return False

    return valid


def _fast_split(compact: str) -> str | None:
    """The NSN of a punctuation-free NANPA number whose parse is a plain digit split."""
    n = len(compact)
    if n == 10 and compact[0] in _NANPA_FIRST and compact.isdigit():
        return compact
    if n == 11 and compact[0] == "1" and compact[1] in _NANPA_FIRST and compact.isdigit():
        return compact[1:]
    if n == 12 and compact[:2] == "+1" and compact[2] in _NANPA_FIRST and compact[2:].isdigit():
        return compact[2:]
    return None


def _compact(text: str) -> str:
    if text.isdigit():
        return text
    # A chain of replace() is ~3x quicker than translate() or re.sub here.
    return (text.replace(" ", "").replace("-", "").replace("(", "").replace(")", "")
            .replace(".", "").replace("/", "").replace("\t", ""))


def _preclean(raw: str, idd: re.Pattern[str] | None) -> str:
    """Undo spreadsheet and encoding damage; the result goes to either parse path."""
    text = raw.strip()
    if not text.isascii():
        for bom in _BOM_REMNANTS:
            text = text.removeprefix(bom)
        text = text.translate(_UNICODE_SPACES).strip()
    if "," in text and _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if ("." in text or "," in text) and (m := _FLOAT_ARTIFACT.fullmatch(text)):
        text = m.group(1)
    # "00" means international in most of the world but not in NANPA (011);
    # where the region's own prefix matches, parse handles it itself.
    if text.startswith("00") and (idd is None or idd.match(_compact(text)) is None):
        text = "+" + text[2:]
    return text


def _error(reason: str) -> Phone:
    return Phone(None, None, reason, None)


_EMPTY = _error("empty")


def normalise(
    raw: str | None,
    region: str = "US",
    fmt: PhoneFormat = PhoneFormat.NATIONAL,
    strict: bool = False,
    foreign: ForeignFormat | None = None,
) -> Phone:
    """Parse one input value; ``error`` says why it cannot be sent, ``warning`` what to know.

    What is sent always dials the number the input names: a number of another
    country than ``region``'s goes as ``foreign`` says (see :class:`ForeignFormat`),
    and a cell holding more than one number is refused, never half-sent.
    """
    if raw is None:
        return _EMPTY
    info = _region_info(region)
    if info is None:
        return _error(f"unknown region {region.strip().upper()!r}")
    region, region_cc, idd = info
    text = _preclean(raw, idd)
    if not text:
        return _EMPTY
    compact = _compact(text)
    extension: str | None = None
    warning: str | None = None
    written = raw.strip()  # what --phone-format as-is sends
    nsn = (_fast_split(compact)
           if compact.isascii() and (region_cc == 1 or compact.startswith("+")) else None)
    if nsn is not None:
        cc = 1
    else:
        if _SCIENTIFIC.fullmatch(text):
            return _error("written in scientific notation (a spreadsheet dropped digits)")
        if _several_numbers(text, region):
            return _error(SEVERAL_NUMBERS)
        if (labelled := _LABELLED.fullmatch(text)) and _whole(labelled["number"], region):
            text, warning = labelled["number"], "text after the number ignored"
            written = text.strip()  # a label is no part of the number, as-is or not
        try:
            num = phonenumbers.parse(text, region)
        except NumberParseException as exc:
            reason = _PARSE_REASONS.get(exc.error_type, "not a phone number")
            if exc.error_type in (NumberParseException.TOO_LONG, NumberParseException.NOT_A_NUMBER):
                reason = _what_is_after(text, region) or reason
            return _error(reason)
        possible = phonenumbers.is_possible_number_with_reason(num)
        if possible in _LENGTH_REASONS:
            too_long = possible in (phonenumbers.ValidationResult.TOO_LONG,
                                    phonenumbers.ValidationResult.INVALID_LENGTH)
            return _error((too_long and _what_is_after(text, region)) or _LENGTH_REASONS[possible])
        cc = num.country_code or 0
        nsn, extension = phonenumbers.national_significant_number(num), num.extension

    if extension:
        warning = _join(warning, f"extension {extension} dropped")
    if not _validator(cc)(nsn):
        if not compact.isdigit() and (after := _what_is_after(text, region)):
            return _error(after)  # "(212) 555-0139 (cell 2)": the letters are not vanity digits
        where = region if cc == region_cc else phonenumbers.region_code_for_country_code(cc)
        if strict:
            return _error(f"not a valid number for {where}")
        warning = _join(warning, f"not a valid number for {where}; sent anyway")
    e164 = f"+{cc}{nsn}"
    if cc != region_cc:
        how = foreign if foreign is not None else _FOREIGN_BY_FORMAT[fmt]
        if how is None and _resolves(written, region, e164):
            return Phone(e164, written, None, warning)  # as-is, and it names its country
        if how is None or how is ForeignFormat.REJECT:
            written = "" if how is not None else " and the text as written does not say so"
            # e164 stays, so the report says which number was refused
            return Phone(e164, None, f"country code +{cc} is not {region}'s{written}: its national "
                         "form would dial another number (--foreign-format sends it whole)", warning)
        return Phone(e164, _foreign_form(how, cc, nsn, region), None, warning)
    if fmt is _NATIONAL:
        sent = nsn
    elif fmt is _E164:
        sent = e164
    elif fmt is _DIGITS:
        sent = e164[1:]
    else:
        sent = written
    return Phone(e164, sent, None, warning)


# What a foreign number is sent as when ``foreign`` is not given (None: as written, if
# the text names its country).
_FOREIGN_BY_FORMAT: dict[PhoneFormat, ForeignFormat | None] = {
    PhoneFormat.NATIONAL: ForeignFormat.REJECT, PhoneFormat.E164: ForeignFormat.E164,
    PhoneFormat.DIGITS: ForeignFormat.DIGITS, PhoneFormat.AS_IS: None,
}


@functools.cache
def _dialling_prefix(region: str) -> str | None:
    """The digits dialled from ``region`` before a country code ("011" from the US)."""
    meta = PhoneMetadata.metadata_for_region(region)
    if meta is None:
        return None
    prefix = meta.preferred_international_prefix or meta.international_prefix or ""
    digits = re.sub(r"\D", "", prefix)  # "8~10" (RU): "~" is "wait for the tone"
    # a pattern ("0[0-3]\\d") is no one prefix: such regions get E.164
    return digits if digits and prefix.replace("~", "").isdigit() else None


def _foreign_form(how: ForeignFormat, cc: int, nsn: str, region: str) -> str:
    if how is ForeignFormat.DIGITS:
        return f"{cc}{nsn}"
    prefix = _dialling_prefix(region) if how is ForeignFormat.INTERNATIONAL else None
    return f"{prefix}{cc}{nsn}" if prefix else f"+{cc}{nsn}"


def _parsed(text: str, region: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(text, region)
    except NumberParseException:
        return None


def _resolves(text: str, region: str, e164: str) -> bool:
    """Whether phonenumbers reads ``text`` in ``region`` as the number ``e164``."""
    num = _parsed(text, region)
    return num is not None and f"+{num.country_code}{phonenumbers.national_significant_number(num)}" == e164


def _whole(text: str, region: str) -> bool:
    """A complete number on its own: possible with its area code, not just locally."""
    num = _parsed(text, region)
    return num is not None and phonenumbers.is_possible_number_with_reason(num) == (
        phonenumbers.ValidationResult.IS_POSSIBLE)


def _valid(text: str, region: str) -> bool:
    num = _parsed(text, region)
    return num is not None and not num.extension and phonenumbers.is_valid_number(num)


def _has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


def _several_numbers(text: str, region: str) -> bool:
    """More than one number in the cell, by a separator ("2125550134;2125550135")."""
    if _SEPARATORS.search(text):
        parts = [p for p in _SEPARATORS.split(text) if _has_digit(p)]
        if sum(1 for p in parts if not _EXTENSION_PART.fullmatch(p.strip())) > 1:
            return True
    if "/" in text and not _valid(text, region):  # a valid number, then more digits after a "/"
        parts = text.split("/")
        for i in range(1, len(parts)):
            if _has_digit("".join(parts[i:])) and _valid("/".join(parts[:i]), region):
                return True
    second = text.find("+", 1)  # "+12125550134 +12125550135"
    return second > 0 and _has_digit(text[:second]) and _has_digit(text[second:])


def _what_is_after(text: str, region: str) -> str | None:
    """Why a too-long value is not one number: two run together, or text after one."""
    digits = "".join(c for c in text if c.isdigit())
    if len(digits) >= 14:  # two numbers of at least 7 digits each
        lead = "+" if text.lstrip().startswith("+") else ""
        for cut in range(7, len(digits) - 6):
            if _valid(lead + digits[:cut], region) and _valid(digits[cut:], region):
                return SEVERAL_NUMBERS
    m = _LEADING_NUMBER.match(text)
    if m is None:
        return None
    rest = text[m.end():].strip()
    number = m.group(0)
    while number and not _valid(number, region):  # the longest prefix that is a whole number
        cut = max(number.rfind(c) for c in " ()-./[]")
        if cut <= 0:
            return None
        rest, number = (number[cut:] + rest).strip(), number[:cut].rstrip(" (-./[")
    return TEXT_AFTER if number and rest else None


def _join(first: str | None, second: str) -> str:
    return second if first is None else f"{first}; {second}"


def mask(number: str | None) -> str:
    """Log-safe form: country prefix and last two digits, e.g. "+1********34"."""
    if not number:
        return ""
    text = number.strip()
    digits = "".join(c for c in text if c.isdigit())
    prefix = ""
    if text.startswith("+"):
        for n in (1, 2, 3):
            if digits[:n].isdigit() and int(digits[:n]) in COUNTRY_CODE_TO_REGION_CODE:
                prefix, digits = "+" + digits[:n], digits[n:]
                break
    # Too few digits and the last two would be most of the number.
    shown = digits[-2:] if len(digits) >= 6 else ""
    return prefix + "*" * (len(digits) - len(shown)) + shown
