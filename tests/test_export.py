"""Export of calibration records: JSON and a group of attributes in an existing HDF5 file."""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from stemcal import cli
from stemcal.catalog import open_catalog, write_record
from stemcal.export import (DEFAULT_GROUP, read_hdf5, record_from_json, record_to_json,
                            write_hdf5, write_json)
from stemcal.record import CalibrationRecord

OPTICS = {"overfocus_setting": 1e-6, "camera_length": 0.2, "high_tension": 200e3,
          "magnification": 1e6, "scan_rotation_setting": 0.0, "scan_pixel_size": 5e-10}


def make_record(**changes) -> CalibrationRecord:
    kw = dict(acquisition_uid="3c1f0e9a-0000-4000-8000-000000000001", time=1.7e9,
              scan_rotation=-41.25, flip_y=False, overfocus=0.95e-6, cy=47.7, cx=46.1,
              descan=[[0.012, -0.004], [0.003, 0.021]],
              uncertainty={"scan_rotation": 0.03, "overfocus": 1e-9, "cy": None},
              blur=0.3125, optics_state=OPTICS, scan_pixel_size=3.75e-10, camera_length=0.2,
              detector_pixel_size=55e-6, semiconv=0.0149,
              fit_settings={"metric": "contrast", "bounds": [1.0, 2.0]})
    kw.update(changes)
    return CalibrationRecord(**kw)


def experiment_file(path) -> dict:
    """An experiment's HDF5 data file; returns what it holds, to compare afterwards."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 4000, size=(4, 5, 16, 16), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("entry/data/frames", data=frames, chunks=(1, 1, 16, 16))
        ds.attrs["units"] = "counts"
        f["entry"].attrs["title"] = "gold on carbon"
    return {"frames": frames}


def test_json_round_trip(tmp_path):
    rec = make_record()
    text = record_to_json(rec)
    assert json.loads(text)["scan_rotation"] == -41.25
    assert record_from_json(text) == rec
    nan_blur = make_record(blur=math.nan, supersedes="77aa0000-0000-4000-8000-000000000000")
    back = record_from_json(record_to_json(nan_blur))
    assert math.isnan(back.blur) and back.supersedes == nan_blur.supersedes
    p = write_json(rec, tmp_path / "rec.json")
    assert record_from_json(p.read_text()) == rec
    with pytest.raises(FileExistsError):
        write_json(rec, p)
    with pytest.raises(ValueError, match="not a JSON"):
        record_from_json("{nope")
    with pytest.raises(ValueError, match="lacks"):
        record_from_json('{"uid": "x"}')


def test_hdf5_group_of_attributes_leaves_the_data_alone(tmp_path):
    path = tmp_path / "experiment.h5"
    before = experiment_file(path)
    rec = make_record()
    assert write_hdf5(rec, path) == "/" + DEFAULT_GROUP
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["entry", DEFAULT_GROUP]
        assert np.array_equal(f["entry/data/frames"][()], before["frames"])
        assert f["entry/data/frames"].attrs["units"] == "counts"
        assert f["entry"].attrs["title"] == "gold on carbon"
        g = f[DEFAULT_GROUP]
        assert len(g) == 0  # attributes only, no datasets
        a = g.attrs
        assert a["uid"] == rec.uid and a["scan_rotation"] == -41.25
        assert a["flip_y"] == np.False_ and a["overfocus"] == 0.95e-6
        assert np.array_equal(a["descan"], [[0.012, -0.004], [0.003, 0.021]])
        assert json.loads(a["optics_state"]) == OPTICS
        assert json.loads(a["units"])["scan_rotation"] == "deg"
        assert "supersedes" not in a  # None is left out
    assert read_hdf5(path) == rec
    # a second record into another group; the first group refuses to be overwritten
    fix = rec.correct(cy=48.0, blur=math.nan)
    write_hdf5(fix, path, "entry/calibration")
    back = read_hdf5(path, "entry/calibration")
    assert back.uid == fix.uid and back.supersedes == rec.uid and math.isnan(back.blur)
    assert back.to_dict() == fix.to_dict()
    with pytest.raises(ValueError, match="already has"):
        write_hdf5(fix, path)
    assert read_hdf5(path) == rec


def test_hdf5_errors(tmp_path):
    rec = make_record()
    with pytest.raises(FileNotFoundError, match="existing file"):
        write_hdf5(rec, tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        write_hdf5(rec, tmp_path / "text.h5")
    path = tmp_path / "e.h5"
    experiment_file(path)
    with pytest.raises(KeyError, match="no group"):
        read_hdf5(path)
    with pytest.raises(ValueError, match="not a stemcal calibration record"):
        read_hdf5(path, "entry")
    with pytest.raises(ValueError, match="group"):
        write_hdf5(rec, path, "../x")


def test_cli_export(tmp_path, capsys):
    directory = tmp_path / "catalog"
    client = open_catalog(directory)
    rec = make_record()
    write_record(client, rec)
    cat = ["--catalog", str(directory)]

    assert cli.main(["export", rec.uid[:8], *cat]) == 0
    out = capsys.readouterr().out
    assert record_from_json(out) == rec
    assert cli.main(["show", rec.uid[:8], *cat, "--json"]) == 0  # show UID as before
    assert CalibrationRecord.from_dict(json.loads(capsys.readouterr().out)) == rec

    assert cli.main(["export", rec.uid, *cat, "--format", "json", "--into",
                     str(tmp_path / "r.json")]) == 0
    assert record_from_json((tmp_path / "r.json").read_text()) == rec

    h5 = tmp_path / "experiment.h5"
    before = experiment_file(h5)
    assert cli.main(["export", rec.uid, *cat, "--format", "hdf5", "--into", str(h5)]) == 0
    assert rec.uid in capsys.readouterr().err
    assert read_hdf5(h5) == rec
    with h5py.File(h5, "r") as f:
        assert np.array_equal(f["entry/data/frames"][()], before["frames"])

    for args, message in (
            (["--format", "hdf5"], "--format hdf5 needs --into FILE"),
            (["--format", "hdf5", "--into", str(tmp_path / "none.h5")], "no HDF5 file"),
            (["--format", "hdf5", "--into", str(h5)], "already has '/stemcal_calibration'"),
            (["--into", str(tmp_path / "r.json")], "exists"),
            (["--group", "x"], "--group applies to --format hdf5 only")):
        assert cli.main(["export", rec.uid, *cat, *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("stemcal: error: ") and message in err[0]
    assert cli.main(["export", "0123abcd", *cat]) == 2
    assert "no calibration record" in capsys.readouterr().err
