"""stemcal.spares without processes: old lock files of other keys are cleared, held or young
ones and this key's stay."""
from __future__ import annotations

import os
import time

from stemcal.locks import try_lock
from stemcal.spares import Kind, _clear_old_locks, spare_dir

KIND = Kind("probe", "STEMCAL_PROBE_SPARE", "probe spare")


def test_old_unheld_lock_files_of_other_keys_are_removed(tmp_path):
    env = {"TMPDIR": str(tmp_path)}
    d = spare_dir(env)
    old = time.time() - 2 * 3600
    names = {"mine": "probe-mine.lock", "old": "probe-old.lock", "held": "probe-held.lock",
             "young": "probe-young.lock", "other kind": "courier-old.lock"}
    for label, name in names.items():
        (d / name).write_text("1\n")
        if label != "young":
            os.utime(d / name, (old, old))
    held = try_lock(d / names["held"])
    assert held is not None
    try:
        _clear_old_locks(KIND, "mine", env)
    finally:
        os.close(held)
    left = {p.name for p in d.iterdir()}
    assert left == set(names.values()) - {names["old"]}
