"""Damaged, read-only and locked catalogs: one line on stderr, and nothing lost.

A catalog holding one record is copied and damaged in five ways: ``catalog.db``
emptied, cut in half, or with five pages overwritten by random bytes; the
event tables (``tables.sqlite``) overwritten; the whole directory read-only
(the command then runs as root without ``CAP_DAC_OVERRIDE``, so the modes bind
it). Then:

* ``history``, ``show`` and ``export`` either work (the damage is somewhere
  they do not read) or fail with exactly one line ``stemcal: error: ...`` and
  status 2; never a traceback;
* ``calibrate`` into a damaged (pages) or read-only catalog still calibrates,
  keeps the record and its run in the spool and says where in one line
  (status 0); once the catalog is replaced or writable again, ``stemcal sync``
  delivers both;
* a catalog whose write lock another process holds makes a writer give up
  after the lock timeout and spool the record, not wait for ever.
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from servers import SMALL, cli_env, drop_dac_override  # tests/catalog/servers.py

from stemcal.catalog import (calibration_history, open_catalog, resolve_run, spool, write_record,
                             write_record_or_spool)
from stemcal.catalog import writelock
from stemcal.record import CalibrationRecord


def make_record(rotation: float = 12.5) -> CalibrationRecord:
    return CalibrationRecord(acquisition_uid=None, scan_rotation=rotation, flip_y=True,
                             overfocus=1.05e-6, cy=51.3, cx=45.3, quality="ok",
                             optics_state={"camera_length": 0.2}, scan_pixel_size=3.75e-10,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.0158)


def _tree(path: Path, mode_dir: int, mode_file: int) -> None:
    for p in [path, *path.rglob("*")]:
        p.chmod(mode_dir if p.is_dir() else mode_file)


def _overwrite(path: Path, pages: list[int], seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for page in pages:
            f.seek(page * 4096)
            f.write(bytes(rng.getrandbits(8) for _ in range(4096)))


DAMAGES = {
    "emptied": lambda d: (d / "catalog.db").write_bytes(b""),
    "cut": lambda d: os.truncate(d / "catalog.db", (d / "catalog.db").stat().st_size // 2),
    "pages": lambda d: _overwrite(d / "catalog.db", [1, 2, 3, 5, 8]),
    "tables": lambda d: (d / "tables.sqlite").write_bytes(b"not a database " * 500),
    "read-only": lambda d: _tree(d, 0o555, 0o444),
    "deleted": lambda d: (d / "catalog.db").unlink(),
}
#: Damage that every reading command meets (the record's metadata is in catalog.db).
CATALOG_DB = {"emptied", "cut", "pages", "deleted"}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A catalog holding one record (with images), its uid."""
    d = tmp_path_factory.mktemp("template") / "cat"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = open_catalog(d)
    rec = make_record()
    write_record(client, rec, {"point": np.eye(8)})
    client.context.close()
    return d, rec.uid


def damaged(template: tuple[Path, str], kind: str, tmp_path: Path) -> Path:
    d = Path(shutil.copytree(template[0], tmp_path / kind))
    for p in d.glob("*-wal"):  # the copy is checkpointed: no journal beside the files
        p.unlink()
    DAMAGES[kind](d)
    return d


def run_cli(args: list, kind: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stemcal.cli", *map(str, args)],
                          env=cli_env(**env), capture_output=True, text=True, timeout=400,
                          cwd="/", preexec_fn=drop_dac_override if kind == "read-only" else None)


def test_reading_commands_give_one_line_whatever_the_damage(template, tmp_path):
    uid = template[1]
    jobs = {}
    for kind in DAMAGES:  # history on every damage, show and export on two
        d = damaged(template, kind, tmp_path)
        cmds = [["history"]] + ([["show", uid], ["export", uid]] if kind in ("pages", "tables")
                                else [])
        for cmd in cmds:
            jobs[(kind, cmd[0])] = [*cmd, "--catalog", d]
    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(jobs, pool.map(lambda k: run_cli(jobs[k], k[0]), jobs)))
    for kind in DAMAGES:
        _tree(tmp_path / kind, 0o755, 0o644)
    for (kind, cmd), proc in done.items():
        assert "Traceback" not in proc.stderr, (kind, cmd, proc.stderr[-2000:])
        if kind in CATALOG_DB:
            assert proc.returncode == 2 and proc.stdout == "", (kind, cmd, proc.stderr)
        if proc.returncode:
            line, = proc.stderr.strip().splitlines()
            assert line.startswith(f"stemcal: error: cannot read catalog {tmp_path / kind}")
        else:
            assert uid[:8] in proc.stdout, (kind, cmd, proc.stdout)


def test_calibrate_into_a_damaged_catalog_keeps_record_and_run(template, tmp_path):
    """(With catalog.db deleted, calibrate used to start a new, empty catalog beside the
    old one's tables and data, which then hid every record there.)"""
    spool_dir = tmp_path / "spool"
    kinds = ["pages", "read-only", "deleted"]
    dirs = {k: damaged(template, k, tmp_path) for k in kinds}
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(kinds, pool.map(lambda k: run_cli(
            ["calibrate", "--catalog", dirs[k], "--json", *SMALL], k,
            STEMCAL_SPOOL=str(spool_dir)), kinds)))
    _tree(dirs["read-only"], 0o755, 0o644)
    kept = {}
    for kind, proc in done.items():
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, (kind, proc.stderr[-3000:])
        out = json.loads(proc.stdout)
        assert out["spooled"] is True and out["valid"] is True
        line, = proc.stderr.strip().splitlines()
        entry = spool.find(out["uid"], spool_dir)
        journal = spool_dir / "runs" / f"{out['acquisition_uid']}.jsonl"
        assert line.startswith(f"stemcal: catalog {dirs[kind]} unavailable (")
        assert str(entry.path) in line and str(journal) in line and journal.is_file()
        kept[kind] = out
    assert "has no catalog.db but tables.sqlite holds tables" in done["deleted"].stderr
    assert not (dirs["deleted"] / "catalog.db").exists()      # no new catalog made there
    dirs["pages"].rename(dirs["pages"].with_name("pages.damaged"))  # replaced by a new one
    shutil.copy(template[0] / "catalog.db", dirs["deleted"] / "catalog.db")   # restored
    # (the read-only one was made writable again)
    sync = run_cli(["sync", "--json"], "", STEMCAL_SPOOL=str(spool_dir))
    assert sync.returncode == 0, sync.stderr
    report = json.loads(sync.stdout)
    assert sorted(d["uid"] for d in report["delivered"]) == sorted(o["uid"] for o in kept.values())
    for kind, out in kept.items():
        client = open_catalog(dirs[kind], create=False)
        assert out["uid"] in [r.uid for r in calibration_history(client)]
        run = resolve_run(client, out["acquisition_uid"])
        frames = run["primary"]["merlin_image"]  # copied into the catalog's raw/ and readable
        assert np.prod(frames.shape[:-2]) == 256
    assert spool.spooled(spool_dir) == [] and not any((spool_dir / "runs").iterdir())


def test_a_held_write_lock_spools_after_the_timeout(template, tmp_path, monkeypatch):
    monkeypatch.setenv("STEMCAL_SPOOL", str(tmp_path / "spool"))
    d = Path(shutil.copytree(template[0], tmp_path / "cat"))
    client = open_catalog(d)
    monkeypatch.setattr(writelock, "LOCK_TIMEOUT_S", 1.0)
    import tiled.client.utils as tcu
    monkeypatch.setattr(tcu, "TILED_RETRY_ATTEMPTS", 1)  # tiled retries a 503 for up to 45 s
    rec = make_record(rotation=3.0)
    with open(d / writelock.WRITE_LOCK) as held:  # another writer that hangs with the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        uid, spooled, reason = write_record_or_spool(client, rec)
    assert spooled and "503" in reason and "locked" in reason, reason
    from stemcal.catalog import sync
    assert sync().delivered == [(rec.uid, str(d))]
    assert rec.uid in [r.uid for r in calibration_history(client)]
