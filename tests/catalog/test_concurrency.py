"""Many processes, one catalog: eight calibrations, readers and a server on one directory at once.

``stemcal serve DIR`` runs; four ``stemcal calibrate --catalog DIR`` (embedded)
and four ``stemcal calibrate --catalog http://...`` (through the server) start
together (16x16 scan, 64x64 detector, one acquisition each), while ``stemcal
history`` reads the directory and the server again and again. Every process
exits 0 without a traceback; the catalog then holds eight complete records
and eight complete acquisition runs whose frames the server reads; nothing is
spooled and nothing is left in the temporary directory.
"""
from __future__ import annotations

import json
import tempfile
import time
import warnings

import numpy as np

from servers import SMALL, Server, new_keys, stemcal, stemcal_popen  # tests/catalog/servers.py

from stemcal.catalog import calibration_history, history_entries, open_catalog, resolve_run, spool

N = 4


def _stemcal_tmp() -> set[str]:
    from pathlib import Path
    return {p.name for p in Path(tempfile.gettempdir()).glob("stemcal*")}


def test_four_embedded_and_four_served_calibrations_at_once(tmp_path):
    catalog, spool_dir = tmp_path / "cat", tmp_path / "spool"
    keys = new_keys()
    server = Server(catalog, keys, tmp_path / "server.log")
    before = _stemcal_tmp()
    server.start()
    try:
        writers = [stemcal_popen("calibrate", "--catalog", catalog, "--json", *SMALL,
                                 STEMCAL_SPOOL=str(spool_dir)) for _ in range(N)]
        writers += [stemcal_popen("calibrate", "--catalog", server.uri, "--json", *SMALL,
                                  key=keys.writer, STEMCAL_SPOOL=str(spool_dir))
                    for _ in range(N)]
        reads = []
        while any(w.poll() is None for w in writers):  # readers while the writers write
            reads.append(stemcal("history", "--catalog", catalog, "--json"))
            reads.append(stemcal("history", "--catalog", server.uri, "--json", key=keys.reader))
            time.sleep(3)
        outs = [(w.returncode, *w.communicate()) for w in writers]
    finally:
        server.stop()
    for rc, out, err in outs:
        assert rc == 0 and "Traceback" not in err, err[-3000:]
        assert json.loads(out)["spooled"] is False
    assert len(reads) >= 2
    for r in reads:
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert all(e["state"] in ("complete", "incomplete") for e in json.loads(r.stdout))

    records = [json.loads(out) for _, out, _ in outs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        client = open_catalog(catalog, create=False)
    assert sorted(r.uid for r in calibration_history(client)) == sorted(r["uid"] for r in records)
    assert all(e.state == "complete" for e in history_entries(client))
    purposes = {u: client[u].metadata["start"]["purpose"] for u in client}
    acquisitions = [u for u, p in purposes.items() if p == "calibration_data"]
    assert sorted(acquisitions) == sorted(r["acquisition_uid"] for r in records)
    # Each calibration's readable result run (the plan's calibration_result) is there too.
    assert sorted(purposes.values()).count("calibration_result") == len(records)
    assert set(purposes.values()) == {"calibration_data", "calibration", "calibration_result"}
    for r in records:
        run = resolve_run(client, r["acquisition_uid"])
        assert run.metadata["start"]["uid"] == r["acquisition_uid"]
        assert run.metadata["stop"]["exit_status"] == "success"
        frames = run["primary"]["merlin_image"]
        assert np.prod(frames.shape[:-2]) == 256 and frames.shape[-2:] == (64, 64)
    assert spool.spooled(spool_dir) == [] and not list((spool_dir / "runs").glob("*"))
    assert _stemcal_tmp() <= before  # nothing left in /tmp
