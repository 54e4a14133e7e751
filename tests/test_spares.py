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


def test_a_spare_that_never_gets_ready_is_killed_by_the_next_claim():
    import shutil
    import subprocess
    import sys
    import tempfile

    from stemcal.spares import connect, spare_key

    base = tempfile.mkdtemp(prefix="sp", dir="/tmp")   # a short path, as sockets need
    env = {**os.environ, "TMPDIR": base, "STEMCAL_PROBE_SPARE": "60"}
    key = spare_key(env)
    lock = spare_dir(env) / f"probe-{key}.lock"
    lock.touch()
    # a stand-in for a spare hung in its imports: holds the lock, writes its pid, never listens
    hung = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'%d\\n' % os.getpid()); "
         "print('held', flush=True); time.sleep(60)", str(lock), "--spare", key],
        stdout=subprocess.PIPE, text=True)
    try:
        assert hung.stdout.readline() == "held\n"
        assert connect(KIND, [], [0, 1, 2], environ=env, wait=0.2) is None
        assert hung.poll() is None   # young: waited for, not killed
        old = time.time() - 600
        os.utime(lock, (old, old))
        assert connect(KIND, [], [0, 1, 2], environ=env, wait=0.2) is None
        assert hung.wait(timeout=5) == -9   # taken for hung
    finally:
        hung.kill()
        hung.wait()
        shutil.rmtree(base, ignore_errors=True)
