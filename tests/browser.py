"""Render a page in headless Chromium and read back the DOM and console (for report tests).

Flags follow what works on closed networks: no background networking, no component
updates, a fresh profile, no sandbox when running as root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from introspect_mech.plots import browser_path


@dataclass
class RenderedPage:
    dom: str
    console: list[str]
    returncode: int

    def attr(self, name: str) -> list[str]:
        return re.findall(rf'{name}="([^"]*)"', self.dom)


def render_page(path: str | Path, wait_ms: int = 15000, timeout: float = 120.0) -> RenderedPage:
    exe = browser_path()
    if exe is None:
        raise FileNotFoundError("no Chromium found: install Debian's `chromium` (make install does it) or set BROWSER_PATH")
    profile = tempfile.mkdtemp(prefix="im-chromium-")
    try:
        cmd = [exe, "--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", f"--virtual-time-budget={wait_ms}", "--dump-dom",
               Path(path).resolve().as_uri()]
        if os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        console = [ln for ln in p.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
        return RenderedPage(p.stdout, console, p.returncode)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
