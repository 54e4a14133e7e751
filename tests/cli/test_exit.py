"""The console script's way out (stemcal.cli.main.run): the status, every byte of output,
the non-daemon threads' work and the atexit handlers, without the interpreter's teardown."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: A command stand-in for main(): a non-daemon thread that writes a file after main has
#: returned, an atexit handler that writes another, a weakref finalizer, 1 MB of stdout
#: (more than a pipe holds) and a last piece still in stdout's buffer, an unterminated
#: line on stderr, and the status given in argv.
SCRIPT = """
import atexit, importlib, sys, threading, time, weakref
from pathlib import Path
cli = importlib.import_module("stemcal.cli.main")   # the package's name main is the function

out = Path(sys.argv[1])

def late():
    time.sleep(0.3)
    (out / "thread").write_text("joined")

class Held:
    pass

def command():
    threading.Thread(target=late).start()
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    held = Held()
    weakref.finalize(held, lambda: (out / "finalizer").write_text("ran"))
    command.held = held
    sys.stdout.write("x" * 2**20 + "\\n")
    sys.stdout.write("end")                         # stays in the buffer until flushed
    sys.stderr.write("a warning")                   # stderr flushes at a newline
    return int(sys.argv[2])

cli.main = command
cli.run()
"""


def run_script(tmp_path: Path, status: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # buffered, as usual
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(status)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def test_run_exits_with_the_status_after_threads_atexit_and_all_output(tmp_path):
    for status in (0, 3):
        for name in ("thread", "atexit", "finalizer"):
            (tmp_path / name).unlink(missing_ok=True)
        proc = run_script(tmp_path, status)
        assert proc.returncode == status, proc.stderr
        assert proc.stdout == "x" * 2**20 + "\nend"
        assert proc.stderr == "a warning"
        assert (tmp_path / "thread").read_text() == "joined"
        assert (tmp_path / "atexit").read_text() == "ran"
        assert (tmp_path / "finalizer").read_text() == "ran"


def test_the_console_script_and_python_m_use_run():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["stemcal"] == "stemcal.cli:run"
    proc = subprocess.run([sys.executable, "-m", "stemcal.cli", "history", "--no-such-option"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-option" in proc.stderr


def test_a_ctrl_c_inside_compiled_code_is_an_interrupt(monkeypatch, capsys):
    """A Ctrl-C landing in a Numba function of LiberTEM's reader came back as 'SystemError:
    ... returned a result with an exception set', status 2 (once in `make test`, the spare's
    Ctrl-C test); an error caused by a KeyboardInterrupt is an interrupt: status 130."""
    import importlib

    from stemcal.cli import offline
    cli_main = importlib.import_module("stemcal.cli.main")   # the package's `main` is the function

    def interrupted_in_numba(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("MyCPUDispatcher(<function _get_read_ranges_inner>) returned a "
                              "result with an exception set") from exc

    from stemcal.cli import bus_error
    monkeypatch.setattr(bus_error, "install", lambda: None)   # this process's signals stay
    monkeypatch.setattr(offline, "run_fit", interrupted_in_numba)
    rc = cli_main.main(["fit", "x.npy", "--scan-pixel-size", "1e-10", "--camera-length", "0.2",
                        "--detector-pixel-size", "5.5e-5", "--overfocus", "1e-6"])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip() == "stemcal: interrupted", (rc, err)
