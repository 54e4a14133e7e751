"""The catalog server as a whole catalog: what each key can do, by raw HTTP and plain clients.

One ``stemcal serve`` (module scope) with writer, reader and admin keys. Runs
are written as stemcal writes them (``RunKeeper``: documents through
``TiledWriter``, a 4D frame stack in an HDF5 file in the server's data
directory). Then, each in its own process where the client's state matters:

* a plain ``tiled.client.from_uri`` with the reader key reads a slice of the
  frames lazily (one GET with the slice) and equal to the file;
* raw ``httpx`` requests: the writer key can add runs and finish them but
  not change or delete them; the admin key can; a detector file outside the
  data directory is refused at registration (400 naming the directory);
* databroker 2's client reads the runs and records (v3 and the v1 ``Broker``);
* a second ``stemcal serve`` of the same directory exits at once and changes
  nothing of the first; a URI holding a key is refused; a wrong key is an
  error, not an outage.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import h5py
import httpx
import numpy as np
import pytest

from servers import SMALL, Server, cli_env, new_keys, stemcal  # tests/catalog/servers.py

from stemcal.catalog import (RunKeeper, open_catalog, open_catalog_or_unavailable, server as srv,
                             spool, write_record, write_record_or_spool)
from stemcal.catalog.keys import KeyInURIError
from stemcal.record import CalibrationRecord


def make_record(acquisition_uid: str | None = None) -> CalibrationRecord:
    return CalibrationRecord(acquisition_uid=acquisition_uid, scan_rotation=23.54, flip_y=True,
                             overfocus=1.05e-6, cy=40.0, cx=41.0, quality="ok",
                             optics_state={"camera_length": 0.2}, scan_pixel_size=2.5e-10,
                             camera_length=0.2, detector_pixel_size=55e-6, semiconv=0.01)


def acquisition(raw: Path, *, stop: bool = True, shape=(4, 4, 16, 16)) -> tuple[str, list]:
    """Documents of a 4D-STEM run like stemcal's: frames in an HDF5 file in ``raw``."""
    from event_model import StreamRange, compose_run, compose_stream_resource

    uid = str(uuid.uuid4())
    raw.mkdir(parents=True, exist_ok=True)
    path = raw / f"{uid}.h5"
    frames = np.random.default_rng(7).integers(0, 1000, size=shape, dtype=np.uint16)
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=frames.reshape(-1, *shape[2:]),
                         chunks=(1, *shape[2:]))
    run = compose_run(uid=uid, metadata={"purpose": "calibration_data", "plan_name": "test"})
    desc = run.compose_descriptor(name="primary", data_keys={"det_image": {
        "source": "test", "dtype": "array", "dtype_numpy": "<u2", "shape": list(shape[2:]),
        "external": "STREAM:"}})
    res = compose_stream_resource(mimetype="application/x-hdf5",
                                  uri="file://localhost" + path.as_posix(), data_key="det_image",
                                  parameters={"dataset": "entry/data/data", "chunk_shape": (1,)},
                                  start=run.start_doc)
    n = shape[0] * shape[1]
    datum = res.compose_stream_datum(indices=StreamRange(start=0, stop=n),
                                     seq_nums=StreamRange(start=1, stop=n + 1),
                                     descriptor=desc.descriptor_doc)
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc),
            ("stream_resource", res.stream_resource_doc), ("stream_datum", datum)]
    if stop:
        docs.append(("stop", run.compose_stop(exit_status="success")))
    return uid, docs


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, uids): a served catalog holding an acquisition, its record and an open run."""
    d = tmp_path_factory.mktemp("served")
    server = Server(d / "cat", new_keys(), d / "server.log")
    server.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.environ["TILED_API_KEY"] = server.keys.writer
            try:
                writer = open_catalog(server.uri)
            finally:
                del os.environ["TILED_API_KEY"]
        keeper = RunKeeper(writer, spool=d / "spool")
        acq, docs = acquisition(server.catalog / "raw")
        for name, doc in docs:
            keeper(name, doc)
        assert list(keeper) == []  # the server took every document
        record = make_record(acq)
        write_record(writer, record, {"point": np.eye(8)})
        open_uid, docs = acquisition(server.catalog / "raw", stop=False)
        for name, doc in docs:
            keeper(name, doc)
        yield server, {"acquisition": acq, "record": record.uid, "open": open_uid}
    finally:
        server.stop()


READER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
from tiled.client import from_uri
uri, key, uid = sys.argv[1:4]
c = from_uri(uri, api_key=key)
requests = []
c.context.http_client.event_hooks["request"].append(
    lambda r: requests.append(f"{r.method} {r.url.path}?{r.url.query.decode()}"))
frames = c[uid]["primary"]["det_image"]
part = frames[0, 2:4]
try:
    c[uid].update_metadata({"start": {"x": 1}})
    write = "allowed"
except Exception as exc:
    write = str(exc)[:200]
print(json.dumps({"shape": list(frames.shape), "part": part.tolist(), "write": write,
                  "array_requests": [r for r in requests if "/array/" in r]}))
"""


def test_reader_key_reads_a_slice_of_the_frames_lazily_in_another_process(served):
    server, uids = served
    proc = subprocess.run([sys.executable, "-c", READER, server.uri, server.keys.reader,
                           uids["acquisition"]], capture_output=True, text=True, timeout=120,
                          env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    with h5py.File(server.catalog / "raw" / f"{uids['acquisition']}.h5") as f:
        truth = f["entry/data/data"][0:16].reshape(16, 16, 16)[0, 2:4]
    assert out["shape"] == [16, 16, 16]
    np.testing.assert_array_equal(np.array(out["part"]), truth)
    # lazily: one request for the slice, nothing for the rest of the stack
    assert len(out["array_requests"]) == 1 and "slice=0%2C2%3A4" in out["array_requests"][0]
    assert "403" in out["write"] or "401" in out["write"]


def _h(key: str | None) -> dict:
    return {"Authorization": f"Apikey {key}"} if key else {}


def test_writer_key_adds_runs_but_never_changes_or_deletes_them(served):
    server, uids = served
    base = f"http://127.0.0.1:{server.port}/api/v1"
    k = server.keys
    rec, acq, open_uid = uids["record"], uids["acquisition"], uids["open"]
    http = httpx.Client(base_url=base, timeout=30)
    md = http.get(f"/metadata/{rec}", headers=_h(k.reader)).json()["data"]["attributes"]["metadata"]
    changed = json.loads(json.dumps(md))
    changed["start"]["calibration"]["scan_rotation"] = 99.0

    def patch(ops):
        return {"json": {"content-type": "application/json-patch+json", "specs": None,
                         "metadata": ops}}

    tries = [  # (who, method, path, request, status)
        ("writer", "PUT", f"/metadata/{rec}",
         {"params": {"drop_revision": "true"}, "json": {"metadata": changed}}, 403),
        ("writer", "PATCH", f"/metadata/{rec}", patch([{"op": "replace", "value": 99.0,
                                                        "path": "/start/calibration/scan_rotation"}]), 403),
        ("writer", "PATCH", f"/metadata/{rec}", patch([{"op": "add", "path": "/stop",
                                                        "value": {"exit_status": "fail"}}]), 403),
        ("writer", "DELETE", f"/metadata/{rec}", {"params": {"recursive": "true"}}, 403),
        ("writer", "DELETE", f"/metadata/{acq}", {"params": {"recursive": "true"}}, 403),
        ("writer", "DELETE", f"/revisions/{rec}", {"params": {"number": 1}}, 403),
        ("writer", "PUT", f"/array/full/{rec}/primary/point",
         {"content": b"\0" * 512, "headers": {"Content-Type": "application/octet-stream"}}, 403),
        ("writer", "POST", f"/metadata/{rec}", {"json": {
            "structure_family": "container", "metadata": {}, "specs": [], "data_sources": [],
            "id": "extra"}}, 403),
        ("writer", "POST", "/auth/apikey", {"json": {"scopes": ["inherit"], "expires_in": 600}},
         403),
        ("writer", "PATCH", f"/metadata/{open_uid}",
         patch([{"op": "replace", "path": "/start/plan_name", "value": "x"}]), 403),
        ("writer", "PUT", f"/metadata/{open_uid}", {"json": {"metadata": {}}}, 403),
        ("reader", "PUT", f"/metadata/{rec}", {"json": {"metadata": changed}}, 403),
        ("reader", "DELETE", f"/metadata/{rec}", {"params": {"recursive": "true"}}, 403),
        (None, "GET", f"/metadata/{rec}", {}, 401),
        ("writer", "PATCH", f"/metadata/{open_uid}",  # what TiledWriter does at the stop
         patch([{"op": "add", "path": "/stop", "value": {"run_start": open_uid,
                                                          "exit_status": "success"}}]), 200),
        ("writer", "PATCH", f"/metadata/{open_uid}",  # and only once
         patch([{"op": "add", "path": "/stop", "value": {"exit_status": "fail"}}]), 403),
    ]
    for who, method, path, kw, status in tries:
        kw = dict(kw)
        headers = {**_h(getattr(k, who) if who else None), **kw.pop("headers", {})}
        r = http.request(method, path, headers=headers, **kw)
        assert r.status_code == status, (who, method, path, r.status_code, r.text[:300])
        if status == 403 and who == "writer":
            assert "append-only catalog" in r.json()["detail"]
    now = http.get(f"/metadata/{rec}", headers=_h(k.reader)).json()["data"]["attributes"]
    assert now["metadata"]["start"]["calibration"]["scan_rotation"] == 23.54  # unchanged
    # The admin key (which the beamline does not hold) can change and delete.
    admin_rec = make_record()
    os.environ["TILED_API_KEY"] = k.writer
    try:
        write_record(open_catalog(server.uri), admin_rec)
    finally:
        del os.environ["TILED_API_KEY"]
    r = http.put(f"/metadata/{admin_rec.uid}", params={"drop_revision": "true"},
                 headers=_h(k.admin), json={"metadata": changed})
    assert r.status_code == 200, r.text
    r = http.delete(f"/metadata/{admin_rec.uid}", headers=_h(k.admin),
                    params={"recursive": "true", "external_only": "false"})
    assert r.status_code == 200, r.text
    assert http.get(f"/metadata/{admin_rec.uid}", headers=_h(k.reader)).status_code == 404


def test_detector_file_outside_the_data_directory_is_refused_at_registration(served, tmp_path):
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri
    from tiled.client.utils import ClientError

    server, _ = served
    uid, docs = acquisition(tmp_path / "elsewhere")
    writer = TiledWriter(from_uri(server.uri, api_key=server.keys.writer))
    with pytest.raises(ClientError, match=r"400.*outside the server's data directories; "
                                          rf"write it below {server.catalog / 'raw'}"):
        for name, doc in docs:
            writer(name, doc)


DATABROKER = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import databroker
from databroker.client import CatalogOfBlueskyRuns
from tiled.client import from_uri
from tiled.queries import Key
uri, key, acq, rec = sys.argv[1:5]
c = from_uri(uri, api_key=key)
out = {"databroker": databroker.__version__, "v3_client": isinstance(c, CatalogOfBlueskyRuns)}
ds = c[acq]["primary"].read()
out["frames"] = list(ds["det_image"].shape)
out["frame_sum"] = int(ds["det_image"][0].sum())
record = c.search(Key("purpose") == "calibration").search(Key("stop.exit_status") == "success")
out["records"] = [r.metadata["start"]["calibration"]["uid"] for r in record.values()]
out["rotation"] = c[rec]["primary"].read()["scan_rotation"].values.tolist()
out["documents"] = [name for name, _ in c[rec].documents()]
db = databroker.Broker(c)  # v1; it turns this process's clients into v2 ones
h = db[rec]
out["v1_table"] = sorted(h.table().columns)
out["v1_calibration"] = h.start["calibration"]["scan_rotation"]
print(json.dumps(out))
"""


def test_databroker_reads_runs_and_records(served):
    server, uids = served
    proc = subprocess.run([sys.executable, "-c", DATABROKER, server.uri, server.keys.reader,
                           uids["acquisition"], uids["record"]], capture_output=True, text=True,
                          timeout=180, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with h5py.File(server.catalog / "raw" / f"{uids['acquisition']}.h5") as f:
        first = int(f["entry/data/data"][0].sum())
    assert out["v3_client"] is True and out["frames"] == [16, 16, 16]
    assert out["frame_sum"] == first
    assert uids["record"] in out["records"] and out["rotation"] == [23.54]
    assert out["documents"][0] == "start" and out["documents"][-1] == "stop"
    assert "scan_rotation" in out["v1_table"] and out["v1_calibration"] == 23.54


def test_second_serve_refuses_and_leaves_the_first_alone(served, tmp_path):
    server, uids = served
    state = srv.state_dir(server.catalog)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in state.iterdir()}
    other = new_keys()
    t = time.monotonic()
    proc = stemcal("serve", "--catalog", server.catalog, "--port", 1, timeout=60,
                   STEMCAL_WRITER_KEY=other.writer)
    assert proc.returncode == 3 and time.monotonic() - t < 30
    line, = proc.stderr.strip().splitlines()
    assert line == (f"stemcal: error: catalog {server.catalog} is already served by process "
                    f"{server.proc.pid} at {server.uri}; not started")
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in state.iterdir()}
    assert after == before  # auth.db and config untouched
    r = httpx.get(f"http://127.0.0.1:{server.port}/api/v1/metadata/{uids['record']}",
                  headers=_h(server.keys.writer))
    assert r.status_code == 200  # the first one still answers its keys


def test_key_in_uri_refused_and_wrong_key_is_an_error_not_an_outage(served, tmp_path,
                                                                    monkeypatch):
    server, _ = served
    key = server.keys.writer
    with pytest.raises(KeyInURIError):
        open_catalog(f"{server.uri}?api_key={key}")
    with pytest.raises(KeyInURIError):
        open_catalog_or_unavailable(server.uri.replace("http://", f"http://u:{key}@"))
    hist = stemcal("history", "--catalog", f"{server.uri}?api_key={key}")
    assert hist.returncode == 2 and len(hist.stderr.strip().splitlines()) == 1
    assert "holds an API key" in hist.stderr and key not in hist.stderr + hist.stdout

    monkeypatch.setenv("STEMCAL_SPOOL", str(tmp_path / "spool"))
    monkeypatch.setenv("TILED_API_KEY", new_keys().writer)  # a key the server does not know
    client = open_catalog_or_unavailable(server.uri)
    assert client.refused and "401" in client.reason
    rec = make_record()
    assert write_record_or_spool(client, rec)[1] is True
    assert spool.find(rec.uid).refused

    cal = stemcal("calibrate", "--catalog", server.uri, "--json", *SMALL,
                  key=new_keys().writer, STEMCAL_SPOOL=str(tmp_path / "spool"))
    assert cal.returncode == 2, cal.stderr
    out = json.loads(cal.stdout)
    line, = cal.stderr.strip().splitlines()
    assert line.startswith(f"stemcal: error: catalog {server.uri} refused the API key")
    entry = spool.find(out["uid"], tmp_path / "spool")
    assert entry is not None and str(entry.path) in line and out["spooled"] is True
