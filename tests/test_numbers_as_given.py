"""What is POSTed names the number the input gave, or the row is rejected: never another subscriber.

Numbers of several countries are written in every way a list holds them (with ``+``,
with ``00`` / ``011``, national with a region column, national without) and run
through the real CLI against the simulator, for default regions US, GB and DE and
each way of sending foreign numbers. Every number the simulator's ledger received
is read back through phonenumbers, the way the sending form is meant to be read,
and must be the input's number; every other row must be rejected with a reason.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

import phonenumbers
import pytest
from helpers import ENV, job_args, read_report, run_cli

from batch_cancel.simulator import ThreadedSimulator

COUNTRIES = ["US", "CA", "GB", "DE", "FR", "IT", "IN", "AU", "JP", "BR", "MX", "CH"]
TYPES = (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE)
E164 = phonenumbers.PhoneNumberFormat.E164


def _valid_numbers(country: str, rng: random.Random, count: int) -> list[phonenumbers.PhoneNumber]:
    """Valid numbers of a country: its example numbers with other tails."""
    out: list[phonenumbers.PhoneNumber] = []
    examples = [e for t in TYPES if (e := phonenumbers.example_number_for_type(country, t))]
    while len(out) < count:
        base = rng.choice(examples)
        nsn = phonenumbers.national_significant_number(base)
        tail = f"{rng.randint(0, 999):03d}"
        candidate = phonenumbers.parse(f"+{base.country_code}{nsn[:-3]}{tail}")
        if phonenumbers.is_valid_number(candidate):
            out.append(candidate)
    return out


def _forms(num: phonenumbers.PhoneNumber, default: str) -> list[tuple[str, str | None]]:
    """(text, region column) in every way a list may hold the number."""
    cc = num.country_code
    country = phonenumbers.region_code_for_number(num)
    national = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.NATIONAL)
    spaced = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    forms = [(spaced, None), (spaced.replace(" ", ""), None),
             ("00 " + spaced[1:], None),  # what most of the world dials abroad
             (national, country),  # national with its region column
             (national, None)]  # national without: it means the default region's number
    if default == "US":
        forms.append(("011 " + spaced[1:], None))  # what NANPA dials abroad
    if cc == 1:
        forms.append(("1 " + national, None))
    return forms


def _meaning(text: str, region: str) -> str | None:
    """The number the input names: for "00 …" the number abroad, else phonenumbers' reading."""
    if text.startswith("00 "):
        text = "+" + text[3:]
    try:
        num = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(num, E164)


def _reader(phone_format: str) -> Callable[[str, str], str]:
    """How GWS would read what was sent, per --phone-format (foreign forms read alike)."""
    if phone_format == "digits":
        return lambda sent, region: phonenumbers.format_number(phonenumbers.parse("+" + sent), E164)
    return lambda sent, region: phonenumbers.format_number(phonenumbers.parse(sent, region), E164)


def _write_input(path: Path, default: str, seed: str) -> dict[int, tuple[str, str, str | None]]:
    """The input file; per row (text, effective region, the number it names)."""
    rng = random.Random(seed)
    rows: list[tuple[str, str | None]] = []
    for country in COUNTRIES:
        for num in _valid_numbers(country, rng, 2):
            rows += _forms(num, default)
    rng.shuffle(rows)
    expected: dict[int, tuple[str, str, str | None]] = {}
    seen: set[str | None] = set()
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["phone_number", "region"])
        for text, region in rows:
            effective = region or default
            meaning = _meaning(text, effective)
            if meaning in seen and meaning is not None:
                continue  # one row per number, so no row is a duplicate of another
            seen.add(meaning)
            w.writerow([text, region or ""])
            expected[len(expected) + 1] = (text, effective, meaning)
    return expected


CONFIGS = [  # (--phone-format, --foreign-format)
    ("national", None), ("national", "international"), ("national", "e164"),
    ("e164", None), ("digits", None), ("as-is", None),
]


@pytest.mark.parametrize("default", ["US", "GB", "DE"])
def test_what_is_posted_is_the_number_given_or_the_row_is_rejected(
    sim: ThreadedSimulator, tmp_path: Path, default: str
) -> None:
    sent_foreign = rejected_foreign = 0
    for i, (phone_format, foreign) in enumerate(CONFIGS):
        work = tmp_path / f"run{i}"
        work.mkdir()
        expected = _write_input(work / "in.csv", default, f"{default}{i}")
        before = {e.reference_id for e in sim.ledger.entries}
        result = run_cli(job_args(sim.base_url, work, work / "in.csv", rate=0, concurrency=16,
                                  default_region=default, phone_format=phone_format,
                                  foreign_format=foreign, ack_timeout=10), ENV)
        assert result.exit_code in (0, 1), result.stderr
        report = {int(r["row"]): r for r in read_report(work / "report.csv")}
        assert sorted(report) == sorted(expected)
        posted = {e.reference_id: e.phone_number for e in sim.ledger.entries
                  if e.reference_id not in before}
        read = _reader(phone_format)
        for row, (text, region, meaning) in expected.items():
            r = report[row]
            what = (phone_format, foreign, default, text, region, r["phone_sent"], r["error"])
            if r["status"] == "rejected":
                assert r["error"] and not r["reference_id"] and r["reference_id"] not in posted, what
                if r["error"].startswith("country code"):
                    rejected_foreign += 1
                continue
            assert r["status"] == "cancelled", what
            sent = posted[r["reference_id"]]
            assert sent == r["phone_sent"], what
            assert meaning is not None and read(sent, region) == meaning, what
            assert r["phone_e164"] == meaning, what
            if not meaning.startswith("+" + str(phonenumbers.country_code_for_region(region))):
                sent_foreign += 1
        assert len(posted) >= len(expected) // 3, (phone_format, foreign)  # most forms are sendable
    # both branches were exercised: foreign numbers sent whole, and refused in national form
    assert sent_foreign > 20 and rejected_foreign > 10, (sent_foreign, rejected_foreign)


def test_the_issue_examples_through_the_cli(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text("phone_number\n+44 20 7946 0958\n011 44 20 7946 0959\n2125550134;2125550135\n"
                   "(212) 555-0139 (cell)\n212-555-0140 x123\n")
    result = run_cli(job_args(sim.base_url, tmp_path, src, rate=0, strict_validation=True), ENV)
    assert result.exit_code == 1, result.stderr
    rows = read_report(tmp_path / "report.csv")
    got = [(r["status"], r["phone_sent"], r["error"][:26], r["warnings"]) for r in rows]
    assert got == [
        ("rejected", "", "country code +44 is not US", ""),
        ("rejected", "", "country code +44 is not US", ""),
        ("rejected", "", "several numbers in one cel", ""),
        ("cancelled", "2125550139", "", "text after the number ignored"),
        ("cancelled", "2125550140", "", "extension 123 dropped"),
    ]
    assert sorted(e.phone_number for e in sim.ledger.entries) == ["2125550139", "2125550140"]
    # the same file, foreign numbers sent whole in the region's international form
    (tmp_path / "again").mkdir()
    again = run_cli(job_args(sim.base_url, tmp_path / "again", src, rate=0,
                             foreign_format="international"), ENV)
    assert again.exit_code == 1, again.stderr
    assert [r["phone_sent"] for r in read_report(tmp_path / "again" / "report.csv")][:2] == [
        "011442079460958", "011442079460959"]
