"""Phone hygiene: every spreadsheet quirk, and the fast path proven against phonenumbers."""

from __future__ import annotations

import random

import phonenumbers
import pytest

from batch_cancel.plan import phones
from batch_cancel.plan.phones import ForeignFormat, Phone, PhoneFormat, mask, normalise, region_ok

US = "+12125550134"


@pytest.mark.parametrize(
    "raw",
    [
        "2125550134", "(212) 555-0134", "212-555-0134", "212.555.0134", "212 555 0134",
        "1-212-555-0134", "12125550134", "+1 212 555 0134", "+12125550134", "+1 (212) 555-0134",
        "0012125550134", "00 1 212 555 0134", "011 1 212 555 0134", "2125550134.0",
        "2125550134.00", "\ufeff2125550134", "ï»¿2125550134", "  2125550134\t", "212\xa0555\xa00134",
        "212/555-0134", "[212] 555-0134", "tel: 212-555-0134", "2125550134,0", "2125550134,00",
    ],
)
def test_quirky_spellings_of_one_number(raw: str) -> None:
    assert normalise(raw) == Phone(e164=US, sent="2125550134", error=None, warning=None)


@pytest.mark.parametrize(
    ("raw", "extension"),
    [("212-555-0134 x123", "123"), ("212.555.0134 ext. 12", "12"), ("2125550134 ext 7", "7"),
     ("+1 212 555 0134 extension 99", "99")],
)
def test_extension_is_dropped_with_a_warning(raw: str, extension: str) -> None:
    p = normalise(raw)
    assert (p.e164, p.sent, p.error) == (US, "2125550134", None)
    assert p.warning == f"extension {extension} dropped"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"), ("", "empty"), ("   ", "empty"), ("\ufeff", "empty"),
        ("abc", "not a phone number"), ("n/a", "not a phone number"),
        ("12", "too short"), ("12345", "too short"), ("2125550134999999999", "too long"),
        ("5550134", "local number without area code"), ("+999 123 4567", "unknown country code"),
        ("2.12555E+09", "written in scientific notation (a spreadsheet dropped digits)"),
        ("2,12555E+09", "written in scientific notation (a spreadsheet dropped digits)"),
        ("4,42079E+11", "written in scientific notation (a spreadsheet dropped digits)"),
    ],
)
def test_unusable_values_are_errors(raw: str | None, reason: str) -> None:
    assert normalise(raw) == Phone(e164=None, sent=None, error=reason, warning=None)


def test_invalid_for_region_is_a_warning_unless_strict() -> None:
    lenient = normalise("212 055 0134")  # exchange codes never start with 0
    assert lenient.error is None and lenient.sent == "2120550134"
    assert lenient.warning == "not a valid number for US; sent anyway"
    strict = normalise("212 055 0134", strict=True)
    assert strict == Phone(None, None, "not a valid number for US", None)
    assert normalise("2125550134", strict=True).error is None


def test_formats() -> None:
    raw = " (212) 555-0134 "
    assert normalise(raw, fmt=PhoneFormat.E164).sent == US
    assert normalise(raw, fmt=PhoneFormat.DIGITS).sent == "12125550134"
    assert normalise(raw, fmt=PhoneFormat.AS_IS).sent == "(212) 555-0134"
    assert normalise(raw, fmt=PhoneFormat.NATIONAL).sent == "2125550134"
    assert PhoneFormat("as-is") is PhoneFormat.AS_IS


def test_region_per_row() -> None:
    uk = normalise("020 7946 0000", "gb")
    assert (uk.e164, uk.sent, uk.error, uk.warning) == ("+442079460000", "2079460000", None, None)
    assert normalise("020 7946 0000", "US").error is not None
    assert normalise("2125550134", "XX").error == "unknown region 'XX'"
    # A Canadian number in a US list is valid NANPA: no warning.
    assert normalise("416 555 0134", "US").warning is None


@pytest.mark.parametrize("raw", ["+44 20 7946 0958", "011 44 20 7946 0958", "0044 20 7946 0958",
                                 "+44 (0)20 7946 0958"])
def test_a_foreign_number_is_never_sent_in_its_national_form(raw: str) -> None:
    # 2079460958 from a US row would dial a number in Maine
    p = normalise(raw, "US")
    assert (p.e164, p.sent) == ("+442079460958", None)
    assert p.error is not None and p.error.startswith("country code +44 is not US's")
    assert "--foreign-format" in p.error
    assert normalise(raw, "US", strict=True).sent is None
    assert normalise(raw, "US", fmt=PhoneFormat.E164).sent == "+442079460958"
    assert normalise(raw, "US", fmt=PhoneFormat.DIGITS).sent == "442079460958"
    ways = {ForeignFormat.E164: "+442079460958", ForeignFormat.DIGITS: "442079460958",
            ForeignFormat.INTERNATIONAL: "011442079460958"}
    for how, sent in ways.items():
        assert normalise(raw, "US", PhoneFormat.NATIONAL, False, how) == Phone(
            "+442079460958", sent, None, None)
    assert normalise(raw, "US", PhoneFormat.E164, False, ForeignFormat.REJECT).sent is None
    # the same number at home is national as before
    assert normalise(raw.replace("011 ", "00 "), "GB").sent == "2079460958"


def test_international_form_uses_the_rows_own_prefix() -> None:
    how = ForeignFormat.INTERNATIONAL
    assert normalise("+1 212 555 0134", "DE", PhoneFormat.NATIONAL, False, how).sent == "0012125550134"
    assert normalise("+1 212 555 0134", "JP", PhoneFormat.NATIONAL, False, how).sent == "01012125550134"
    assert normalise("+1 212 555 0134", "AU", PhoneFormat.NATIONAL, False, how).sent == "001112125550134"
    # no single prefix (Brazil picks a carrier): E.164 rather than a guess
    assert normalise("+1 212 555 0134", "BR", PhoneFormat.NATIONAL, False, how).sent == "+12125550134"


def test_as_is_sends_a_foreign_number_only_when_its_text_names_the_country() -> None:
    assert normalise(" +44 20 7946 0958", "US", PhoneFormat.AS_IS).sent == "+44 20 7946 0958"
    assert normalise("011 44 20 7946 0958", "US", PhoneFormat.AS_IS).sent == "011 44 20 7946 0958"
    # 00 is not how the US dials abroad: sent as written it would not reach +44
    refused = normalise("0044 20 7946 0958", "US", PhoneFormat.AS_IS)
    assert refused.sent is None and refused.error is not None and "as written" in refused.error
    assert normalise("0044 20 7946 0958", "DE", PhoneFormat.AS_IS).sent == "0044 20 7946 0958"


@pytest.mark.parametrize(
    "raw",
    ["2125550134;2125550135", "2125550134, 2125550135", "2125550134 / 2125550135",
     "2125550134|2125550135", "2125550134 or 2125550135", "2125550134 OR 2125550135",
     "2125550134 & 2125550135", "2125550134 and (212) 555-0135", "2125550134 2125550135",
     "21255501342125550135", "+12125550134+12125550135", "+1 212 555 0134 +1 212 555 0135",
     "212-555-0134; 555-0135", "2125550134/35", "(212) 555-0134 (cell), (212) 555-0135 (home)",
     "2125550134\n2125550135"],
)
def test_several_numbers_in_one_cell_are_refused(raw: str) -> None:
    assert normalise(raw) == Phone(None, None, "several numbers in one cell", None)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [("212/555-0134", US), ("1/212/555/0134", US), ("030/1234567", "+49301234567"),
     ("2,125,550,134", US), ("tel:+1-212-555-0134;ext=12", US), ("212-555-0134, ext. 12", US)],
)
def test_one_number_with_separator_characters_is_one_number(raw: str, e164: str) -> None:
    p = normalise(raw, "DE" if e164.startswith("+49") else "US")
    assert (p.e164, p.error) == (e164, None)


@pytest.mark.parametrize("raw", ["(212) 555-0134 (cell)", "212-555-0134 home", "2125550134 - Work",
                                 "(212) 555-0134 [mobile]"])
def test_a_label_after_the_number_is_ignored_with_a_warning(raw: str) -> None:
    assert normalise(raw) == Phone(US, "2125550134", None, "text after the number ignored")
    as_is = normalise(raw, fmt=PhoneFormat.AS_IS).sent  # the label is not sent either
    assert as_is is not None and phonenumbers.parse(as_is, "US").national_number == 2125550134
    assert not any(c.isalpha() for c in as_is)


@pytest.mark.parametrize("raw", ["(212) 555-0134 (cell 2)", "2125550134 99"])
def test_other_text_after_the_number_is_refused_as_such(raw: str) -> None:
    assert normalise(raw) == Phone(None, None, "text after the number", None)


def test_vanity_numbers_still_parse() -> None:
    assert normalise("1-800-FLOWERS").e164 == "+18003569377"


def test_region_ok() -> None:
    assert region_ok("US") and region_ok("gb") and region_ok(" ca ")
    assert not region_ok("XX") and not region_ok("") and not region_ok("USA")


@pytest.mark.parametrize(
    ("number", "masked"),
    [("+12125550134", "+1********34"), ("2125550134", "********34"),
     ("(212) 555-0134", "********34"), ("+442079460000", "+44********00"),
     ("911", "***"), ("", ""), (None, "")],
)
def test_mask(number: str | None, masked: str) -> None:
    assert mask(number) == masked
    if number:
        assert "2125550134" not in mask(number)


# --- the fast path must agree with phonenumbers on everything it touches -------------

def _reference(raw: str, region: str, fmt: PhoneFormat, strict: bool) -> Phone:
    """normalise() written with nothing but the public phonenumbers API."""
    text = phones._preclean(raw, phones._region_info(region)[2])  # type: ignore[index]
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return Phone(None, None, "parse", None)
    if phonenumbers.is_possible_number_with_reason(num) in phones._LENGTH_REASONS:
        return Phone(None, None, "length", None)
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    valid = phonenumbers.is_valid_number(num)
    if strict and not valid:
        return Phone(None, None, "invalid", None)
    nsn = phonenumbers.national_significant_number(num)
    if num.country_code != phonenumbers.country_code_for_region(region):
        # a foreign number: never its national form; as written only if that reads the same
        if fmt is PhoneFormat.NATIONAL:
            return Phone(e164, None, "foreign", None if valid else "invalid")
        if fmt is PhoneFormat.AS_IS:
            try:
                again = phonenumbers.format_number(phonenumbers.parse(raw.strip(), region),
                                                   phonenumbers.PhoneNumberFormat.E164)
            except phonenumbers.NumberParseException:
                again = None
            if again != e164:
                return Phone(e164, None, "foreign", None if valid else "invalid")
    sent = {PhoneFormat.NATIONAL: nsn, PhoneFormat.E164: e164, PhoneFormat.DIGITS: e164[1:]}
    return Phone(e164, sent.get(fmt, raw.strip()), None, None if valid else "invalid")


def _coarse(p: Phone) -> Phone:
    # Compare outcomes, not wording: which error class, whether the validity warning is there.
    error = None if p.error is None else (
        "parse" if p.error in ("not a phone number", "unknown country code") or
        p.error.startswith("written in") else
        "invalid" if p.error.startswith("not a valid") else
        "foreign" if p.error.startswith("country code") else
        "length" if p.error in phones._LENGTH_REASONS.values() else "parse")
    warning = "invalid" if p.warning and "not a valid" in p.warning else None
    return Phone(p.e164, p.sent, error, warning)


def _generated(rng: random.Random, count: int) -> list[str]:
    shapes = ["{a}{b}{c}", "({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "1{a}{b}{c}",
              "1 {a} {b} {c}", "+1{a}{b}{c}", "+1 ({a}) {b}-{c}", "+ 1 {a} {b} {c}", "00 1 {a}{b}{c}",
              "{a}{b}{c}.0", "-{a}-{b}-{c}-", "(({a})){b}//{c}", "1/{a}/{b}/{c}", "{a} {b}{c}",
              "{a}{b}{c}0", "{b}{c}", "+{a}{b}{c}", "011{a}{b}{c}", "{a}{b}"]
    out = []
    for _ in range(count):
        # Mostly plausible NANPA digits, but leading 0/1 and short groups too.
        a = f"{rng.randint(0, 999):03d}" if rng.random() < 0.2 else str(rng.randint(200, 999))
        b = f"{rng.randint(0, 999):03d}"
        c = f"{rng.randint(0, 9999):04d}"
        out.append(rng.choice(shapes).format(a=a, b=b, c=c))
    return out


NANPA_REGIONS = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]
REGIONS = ["US", "CA", "GB", *random.Random(3).sample(NANPA_REGIONS[2:], 4)]


@pytest.mark.parametrize("region", REGIONS)
def test_fast_path_matches_phonenumbers(region: str) -> None:
    rng = random.Random(region)
    for raw in _generated(rng, 1500):
        fmt = rng.choice(list(PhoneFormat))
        strict = rng.random() < 0.3
        assert _coarse(normalise(raw, region, fmt, strict)) == _reference(raw, region, fmt, strict), (
            raw, region)


@pytest.mark.parametrize("cc", [1, 7, 44, 49, 33, 61, 91, 39, 800, 262])
def test_compiled_validator_matches_is_valid_number(cc: int) -> None:
    rng = random.Random(cc)
    validate = phones._validator(cc)
    # Real examples with their tails scrambled hit the valid side; random digits the invalid.
    examples = [str(e.national_number) for r in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[cc]
                for t in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE)
                if (e := phonenumbers.example_number_for_type(r if r != "001" else None, t)
                    if r != "001" else phonenumbers.example_number_for_non_geo_entity(cc))]
    valid_seen = 0
    for _ in range(1500):
        if examples and rng.random() < 0.6:
            base = rng.choice(examples)
            nsn = base[:-3] + f"{rng.randint(0, 999):03d}"
        else:
            nsn = str(rng.randint(10 ** rng.randint(3, 8), 10 ** rng.randint(9, 11)))
        num = phonenumbers.PhoneNumber(country_code=cc, national_number=int(nsn))
        expected = phonenumbers.is_valid_number(num)
        valid_seen += expected
        assert validate(nsn) == expected, (cc, nsn)
    assert valid_seen > 100  # the comparison exercised both answers
