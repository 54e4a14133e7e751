"""The IPython profile wires the app to its session: ``serve_app()`` serves it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "profile_stemcal"

SCRIPT = r"""
import json, urllib.request
server = serve_app()
page = urllib.request.urlopen(server.url, timeout=30).read().decode()
print("RESULT " + json.dumps({"url": server.url, "bokeh": "Bokeh" in page,
                              "recorder": stemcal_app.recorder is recorder,
                              "catalog": stemcal_app.catalog() is catalog}))
server.stop()
"""


def test_profile_serves_the_app_on_its_session(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[catalog]\nlocation = "{tmp_path / "catalog"}"\n')
    env = dict(os.environ, STEMCAL_CONFIG=str(config), MPLBACKEND="Agg",
               IPYTHONDIR=str(tmp_path / "ipython"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROFILE.parents[1]),
                                                      env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "IPython", "--profile-dir", str(PROFILE),
                           "--no-banner", "--HistoryManager.enabled=False", "-c", SCRIPT],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(line[0][len("RESULT "):])
    assert res["url"].startswith("http://127.0.0.1:")
    assert res["bokeh"] and res["recorder"] and res["catalog"]
    assert f"stemcal app: {res['url']}" in proc.stdout
