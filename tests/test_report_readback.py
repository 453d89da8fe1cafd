"""Reports that programs can trust: every format read back with pandas and with duckdb.

One real run against the simulator writes the CSV report; resuming its finished
journal writes the same report as Parquet and JSONL. Each is then read the way the
README says: E.164 on every sent row, typed times and integers in Parquet, nulls
as nulls, and the cells a spreadsheet would execute still neutralised in the CSV.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ENV, job_args, numbers, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
TEXT = {c: "string" for c in ("phone_number", "phone_e164", "phone_sent", "campaign", "calling_list")}
EVIL = ["=HYPERLINK(\"http://evil.example\",\"x\")", "@SUM(A1)", "+cmd|' /C calc'!A0", "-2+3"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from helpers import make_sim

    tmp = tmp_path_factory.mktemp("readback")
    nums = numbers(40)
    rows: list[list[Any]] = [[n, "Campaign1"] for n in nums]
    rows += [["+44 20 7946 0958", "Campaign1"], ["+49 30 901820", "Campaign1"],  # sent whole
             ["2125550134;2125550135", "Campaign1"], ["n/a", "Campaign1"], [nums[0], "Campaign1"]]
    rows += [[n, evil] for n, evil in zip(numbers(4, start=900), EVIL, strict=True)]
    src = write_csv(tmp / "in.csv", ["phone_number", "campaign_name"], rows)
    sim: ThreadedSimulator = make_sim()
    try:
        args = job_args(sim.base_url, tmp, src, rate=0, foreign_format="e164")
        result = run_cli(args, ENV)
        assert result.exit_code == 1, result.stderr  # two rows are rejected on purpose
        assert result.summary["cancelled"] == 46
    finally:
        sim.stop()
    out = {".csv": tmp / "report.csv"}
    for suffix in (".parquet", ".jsonl"):  # the finished journal, written again: nothing is sent
        again = [*args]
        again[again.index("--report") + 1] = str(tmp / f"report{suffix}")
        assert run_cli(again, ENV).exit_code == 1
        out[suffix] = tmp / f"report{suffix}"
    return out


def _check_frame(df: pd.DataFrame) -> None:
    sent = df[df["status"] == "cancelled"]
    assert len(sent) == 46 and len(df) == 49
    assert all(E164.fullmatch(v) for v in sent["phone_e164"]), list(sent["phone_e164"])
    assert {"+442079460958", "+4930901820"} <= set(sent["phone_e164"])
    assert set(df["status"]) == {"cancelled", "rejected", "duplicate"}
    assert df["row"].tolist() == list(range(1, 50))


def test_pandas_reads_every_format(reports: dict[str, Path]) -> None:
    csv_df = pd.read_csv(reports[".csv"], dtype=TEXT, parse_dates=["sent_at", "acked_at"])
    parquet_df = pd.read_parquet(reports[".parquet"])
    json_df = pd.read_json(reports[".jsonl"], lines=True, dtype=TEXT)
    for df in (csv_df, parquet_df, json_df):
        _check_frame(df)
    assert str(parquet_df["sent_at"].dtype) == "datetime64[ms, UTC]"
    assert str(csv_df["sent_at"].dtype).startswith("datetime64") and csv_df["sent_at"].notna().sum() == 46
    assert (parquet_df["sent_at"].dropna().dt.tz_convert("UTC").astype(str).tolist()
            == csv_df["sent_at"].dropna().dt.tz_convert("UTC").astype(str).tolist())
    assert parquet_df["attempts"].dtype == "int64" and parquet_df["row"].dtype == "int64"
    # the CSV keeps spreadsheets from running a formula; the other formats carry the value
    campaigns = csv_df["campaign"].tolist()
    assert ["'" + e for e in EVIL] == campaigns[-4:]
    assert parquet_df["campaign"].tolist()[-4:] == EVIL == json_df["campaign"].tolist()[-4:]
    assert csv_df["phone_e164"].fillna("").tolist() == parquet_df["phone_e164"].fillna("").tolist()


def test_duckdb_reads_every_format(reports: dict[str, Path]) -> None:
    con = duckdb.connect()
    csv_rel = con.sql(f"""SELECT * FROM read_csv('{reports['.csv']}', types={{'phone_number': 'VARCHAR',
                         'phone_e164': 'VARCHAR', 'phone_sent': 'VARCHAR'}})""")
    parquet_rel = con.sql(f"SELECT * FROM '{reports['.parquet']}'")
    json_rel = con.sql(f"SELECT * FROM read_json('{reports['.jsonl']}', format='newline_delimited')")
    for rel in (csv_rel, parquet_rel, json_rel):
        sent = [r[0] for r in rel.filter("status = 'cancelled'").select("phone_e164").fetchall()]
        assert len(sent) == 46 and all(E164.fullmatch(v) for v in sent), sent
    types = dict(zip(parquet_rel.columns, map(str, parquet_rel.types), strict=True))
    assert types["sent_at"] == types["acked_at"] == "TIMESTAMP WITH TIME ZONE"
    assert {types[c] for c in ("row", "application_id", "attempts", "http_status", "status_code",
                               "duplicate_of")} == {"BIGINT"}
    assert types["latency_ms"] == "DOUBLE"
    # nulls are nulls, not empty strings: a rejected row has no reference id, a sent one no error
    assert con.execute(f"SELECT count(*) FROM '{reports['.parquet']}' WHERE error = '' OR "
                       "reference_id = '' OR warnings = ''").fetchall() == [(0,)]
    assert con.execute(f"SELECT count(*) FROM '{reports['.parquet']}' WHERE status = 'rejected' "
                       "AND reference_id IS NULL AND error IS NOT NULL").fetchall() == [(2,)]
    evil = [r[0] for r in csv_rel.filter("row > 45").select("campaign").fetchall()]
    assert evil == ["'" + e for e in EVIL]


def test_parquet_schema_is_typed(reports: dict[str, Path]) -> None:
    schema = pq.read_schema(reports[".parquet"])
    assert schema.field("sent_at").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("acked_at").type == pa.timestamp("ms", tz="UTC")
    for name in ("row", "application_id", "attempts", "http_status", "status_code", "duplicate_of"):
        assert schema.field(name).type == pa.int64()
