"""Every output path is checked before login: collisions and unwritable places exit 2, nothing sent,
every file byte for byte as it was."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from helpers import ENV, job_args, numbers, read_report, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _refused(sim: ThreadedSimulator, tmp: Path, args: list[str], expected: str) -> None:
    before = _digests(tmp)
    result = run_cli(args, ENV)
    assert result.exit_code == 2, result.stderr
    assert expected in result.stderr, result.stderr
    assert result.summary["exit_code"] == 2 and expected in result.summary["error"]
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    # nothing sent, not even a login, and no file changed, appeared or vanished
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
    assert _digests(tmp) == before


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])


def _args(sim: ThreadedSimulator, tmp: Path, src: Path, **opts: object) -> list[str]:
    return job_args(sim.base_url, tmp, src, rate=0, **opts)


@pytest.mark.parametrize("dry_run", [False, True])
def test_report_equal_to_the_input(sim: ThreadedSimulator, tmp_path: Path, src: Path, dry_run: bool) -> None:
    args = [*_args(sim, tmp_path, src, dry_run=dry_run), "--report", str(src)]
    _refused(sim, tmp_path, args, "is the input file")


def test_report_reaching_the_input_through_a_symlink(sim: ThreadedSimulator, tmp_path: Path,
                                                     src: Path) -> None:
    (tmp_path / "alias.csv").symlink_to(src)
    _refused(sim, tmp_path, [*_args(sim, tmp_path, src), "--report", str(tmp_path / "alias.csv")],
             "is the input file")  # fmt: skip


def test_report_equal_to_the_journal(sim: ThreadedSimulator, tmp_path: Path, src: Path) -> None:
    same = str(tmp_path / "run.csv")
    _refused(sim, tmp_path, [*_args(sim, tmp_path, src), "--report", same, "--state", same],
             "are the same file")  # fmt: skip
    assert not (tmp_path / "run.csv").exists()


def test_html_equal_to_an_existing_journal(sim: ThreadedSimulator, tmp_path: Path, src: Path) -> None:
    assert run_cli(_args(sim, tmp_path, src), ENV).exit_code == 0
    posted = len(sim.ledger.entries)
    before = _digests(tmp_path)
    result = run_cli([*_args(sim, tmp_path, src), "--html", str(tmp_path / "state.sqlite")], ENV)
    assert result.exit_code == 2 and "are the same file" in result.stderr, result.stderr
    assert len(sim.ledger.entries) == posted and _digests(tmp_path) == before


def test_html_equal_to_the_input_or_the_report(sim: ThreadedSimulator, tmp_path: Path, src: Path) -> None:
    _refused(sim, tmp_path, [*_args(sim, tmp_path, src), "--html", str(src)], "is the input file")
    _refused(sim, tmp_path, [*_args(sim, tmp_path, src), "--html", str(tmp_path / "report.csv")],
             "are the same file")  # fmt: skip


def test_state_equal_to_the_input(sim: ThreadedSimulator, tmp_path: Path, src: Path) -> None:
    _refused(sim, tmp_path, [*_args(sim, tmp_path, src), "--state", str(src)], "is the input file")


@pytest.mark.parametrize("flag", ["--report", "--html", "--state"])
def test_output_under_a_regular_file(sim: ThreadedSimulator, tmp_path: Path, src: Path, flag: str) -> None:
    (tmp_path / "afile").write_text("I am a file\n")
    _refused(sim, tmp_path, [*_args(sim, tmp_path, src), flag, str(tmp_path / "afile" / "sub" / "x.csv")],
             "is a file, not a folder")  # fmt: skip


def test_missing_folders_are_created(sim: ThreadedSimulator, tmp_path: Path, src: Path) -> None:
    out = tmp_path / "new" / "deeper"
    result = run_cli([*_args(sim, tmp_path, src), "--report", str(out / "r.csv"),
                      "--state", str(out / "s.sqlite"), "--html", str(out / "e.html")], ENV)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in out.iterdir()} >= {"r.csv", "s.sqlite", "e.html"}
    assert not [p for p in out.iterdir() if p.name.startswith(".batch-cancel-check-")]


@pytest.mark.parametrize("content", [b"phone_number\n2125550100\n", b"SQLite format 3\x00" + b"\x00" * 84,
                                     b"truncated"])  # fmt: skip
def test_state_that_is_not_a_journal_is_named_and_untouched(sim: ThreadedSimulator, tmp_path: Path,
                                                            src: Path, content: bytes) -> None:  # fmt: skip
    (tmp_path / "state.sqlite").write_bytes(content)
    _refused(sim, tmp_path, _args(sim, tmp_path, src), "state.sqlite")


def test_a_foreign_sqlite_database_is_not_a_journal(sim: ThreadedSimulator, tmp_path: Path,
                                                    src: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO customers(name) VALUES ('precious')")
    db.commit()
    db.close()
    _refused(sim, tmp_path, _args(sim, tmp_path, src), "not a batch-cancel journal")


def test_a_truncated_journal_is_refused(sim: ThreadedSimulator, tmp_path: Path, src: Path) -> None:
    assert run_cli(_args(sim, tmp_path, src, dry_run=True), ENV).exit_code == 0
    state = tmp_path / "state.sqlite"
    state.write_bytes(state.read_bytes()[:5000])
    _refused(sim, tmp_path, _args(sim, tmp_path, src), "state.sqlite")


def test_an_empty_state_file_is_a_new_journal(sim: ThreadedSimulator, tmp_path: Path, src: Path) -> None:
    (tmp_path / "state.sqlite").write_bytes(b"")
    result = run_cli(_args(sim, tmp_path, src), ENV)
    assert result.exit_code == 0, result.stderr


def test_merge_out_rules(tmp_path: Path, src: Path, sim: ThreadedSimulator) -> None:
    assert run_cli(_args(sim, tmp_path, src, dry_run=True), ENV).exit_code == 0
    report = tmp_path / "report.csv"
    (tmp_path / "afile").write_text("x\n")
    for out, expected in ((report, "is the input file"), (tmp_path / "afile" / "m.csv", "not a folder")):
        before = _digests(tmp_path)
        result = run_cli(["merge", str(report), "--out", str(out)])
        assert result.exit_code == 2 and expected in result.stderr, result.stderr
        assert _digests(tmp_path) == before


def test_validate_job_checks_the_files_outputs(tmp_path: Path, src: Path) -> None:
    job = tmp_path / "job.toml"
    base = 'campaign = "C"\ncalling_list = "L"\napplication_id = 1\ninputs = ["in.csv"]\n'
    (tmp_path / "afile").write_text("x\n")
    for extra, expected in (('report = "in.csv"\n', "is the input file"),
                            ('state = "in.csv"\n', "is the input file"),
                            ('html = "afile/e.html"\n', "not a folder"),
                            ('report = "r.csv"\nhtml = "r.csv"\n', "are the same file")):  # fmt: skip
        job.write_text(base + extra)
        before = _digests(tmp_path)
        result = run_cli(["validate-job", str(job)])
        assert result.exit_code == 2 and expected in result.stderr, (extra, result.stderr)
        assert _digests(tmp_path) == before
    job.write_text(base + 'report = "out/deep/r.csv"\n')
    assert run_cli(["validate-job", str(job)]).exit_code == 0
    assert not (tmp_path / "out").exists()  # could be created, so valid; validate-job creates nothing


def test_status_on_a_file_that_is_not_a_journal(tmp_path: Path, src: Path) -> None:
    before = _digests(tmp_path)
    result = run_cli(["status", "--state", str(src)])
    assert result.exit_code == 2 and "not a batch-cancel journal" in result.stderr
    assert _digests(tmp_path) == before


@pytest.mark.parametrize(
    ("flag", "name", "content"),
    [("--report", "notes.csv", b"customer,phone\nACME,2125550100\n"),
     ("--report", "notes.jsonl", b'{"customer": "ACME"}\n'),
     ("--report", "notes.parquet", b"PAR1 not really"),
     ("--report", "notes.csv", b"\xff\xfe binary"),
     ("--html", "notes.html", b"<html><body>our wiki page</body></html>"),
     ("--metrics-file", "node.prom", b"# HELP node_load1 1m load average.\nnode_load1 0.4\n")],
)  # fmt: skip
def test_an_existing_file_we_did_not_write_is_never_replaced(sim: ThreadedSimulator, tmp_path: Path,
                                                             src: Path, flag: str, name: str,
                                                             content: bytes) -> None:  # fmt: skip
    # a typo (--report notes.csv for --report notes-out.csv) once replaced the user's file
    (tmp_path / name).write_bytes(content)
    for dry_run in (True, False):
        _refused(sim, tmp_path, [*_args(sim, tmp_path, src, dry_run=dry_run), flag, str(tmp_path / name)],
                 f"{flag} {tmp_path / name} exists and is not a batch-cancel")  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_report_of_ours_of_any_run_is_replaced(sim: ThreadedSimulator, tmp_path: Path, src: Path,
                                                 suffix: str) -> None:  # fmt: skip
    report, html, metrics = tmp_path / f"r{suffix}", tmp_path / "e.html", tmp_path / "m.prom"
    outputs = ["--report", str(report), "--html", str(html), "--metrics-file", str(metrics)]
    first = run_cli([*_args(sim, tmp_path, src, state=tmp_path / "one.sqlite"), *outputs], ENV)
    assert first.exit_code == 0, first.stderr
    # a resume, and a new run with another journal, both write over what a run of ours wrote
    for state in ("one.sqlite", "two.sqlite"):
        again = run_cli([*_args(sim, tmp_path, src, state=tmp_path / state), *outputs], ENV)
        assert again.exit_code == 0, again.stderr
    (tmp_path / "empty.csv").write_bytes(b"")  # an empty file holds nothing to lose
    result = run_cli([*_args(sim, tmp_path, src, state=tmp_path / "three.sqlite"),
                      "--report", str(tmp_path / "empty.csv")], ENV)  # fmt: skip
    assert result.exit_code == 0, result.stderr


def test_merge_does_not_replace_a_file_that_is_not_a_report(tmp_path: Path, src: Path,
                                                            sim: ThreadedSimulator) -> None:  # fmt: skip
    assert run_cli(_args(sim, tmp_path, src, dry_run=True), ENV).exit_code == 0
    (tmp_path / "notes.csv").write_text("my notes\n")
    before = _digests(tmp_path)
    result = run_cli(["merge", str(tmp_path / "report.csv"), "--out", str(tmp_path / "notes.csv")])
    assert result.exit_code == 2 and "exists and is not a batch-cancel report" in result.stderr
    assert _digests(tmp_path) == before


def test_report_command_outputs_are_checked(tmp_path: Path, src: Path, sim: ThreadedSimulator) -> None:
    assert run_cli(_args(sim, tmp_path, src, dry_run=True), ENV).exit_code == 0
    state, notes = tmp_path / "state.sqlite", tmp_path / "notes.csv"
    notes.write_text("my notes\n")
    for extra, expected in ((["--out", str(notes)], "exists and is not a batch-cancel report"),
                            (["--out", str(tmp_path / "r.csv"), "--html", str(state)], "is the input file"),
                            (["--out", str(tmp_path / "r.csv"), "--html", str(tmp_path / "r.csv")],
                             "are the same file")):  # fmt: skip
        before = _digests(tmp_path)
        result = run_cli(["report", "--state", str(state), *extra])
        assert result.exit_code == 2 and expected in result.stderr, (extra, result.stderr)
        assert _digests(tmp_path) == before
    # the dry run's own report is ours: written again (exit 3: a dry run leaves its rows pending)
    ok = run_cli(["report", "--state", str(state), "--out", str(tmp_path / "report.csv")])
    assert ok.exit_code == 3 and ok.summary["pending"] == 3, ok.stderr


def test_a_report_that_cannot_be_written_exits_3_with_the_true_counts(sim: ThreadedSimulator, tmp_path: Path,
                                                                     src: Path) -> None:  # fmt: skip
    # the disk fills up after the sending: the report's temporary file writes to /dev/full
    report, tmp = tmp_path / "report.csv", tmp_path / ".report.csv.tmp"
    tmp.symlink_to("/dev/full")
    result = run_cli(_args(sim, tmp_path, src), ENV)
    assert result.exit_code == 3, result.stderr
    summary = result.summary  # what was done, not zeros
    assert summary["exit_code"] == 3 and summary["total"] == summary["cancelled"] == 3
    assert "could not write" in summary["error"] and "No space left on device" in summary["error"]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert not report.exists() and not tmp.exists()  # no half file, no temporary one left
    again = run_cli(_args(sim, tmp_path, src), ENV)  # run again: the report, nothing sent again
    assert again.exit_code == 0, again.stderr
    assert len(read_report(report)) == 3 and len(sim.ledger.entries) == 3


def test_a_journal_whose_tables_a_full_disk_cut_short_is_still_ours(sim: ThreadedSimulator, tmp_path: Path,
                                                                    src: Path) -> None:  # fmt: skip
    # what an earlier version left when the disk filled up while it made the tables: the
    # lock table and the first of the others, and a main file that needs the WAL to be read
    from batch_cancel.journal import lock

    state = tmp_path / "state.sqlite"
    db = sqlite3.connect(state, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute(lock._SCHEMA)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    wal = Path(f"{state}-wal").read_bytes()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    # the checkpoint that met the full disk wrote page 1 (which names later pages) and
    # no more; the WAL still holds every page
    state.write_bytes(state.read_bytes()[:4096])
    Path(f"{state}-wal").write_bytes(wal)
    result = run_cli(_args(sim, tmp_path, src), ENV)
    assert result.exit_code == 0, result.stderr
    assert result.summary["cancelled"] == 3
