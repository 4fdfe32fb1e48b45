"""Headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

No extra Python package: Chromium reads NUL-terminated JSON messages on fd 3 and writes
them on fd 4. ``open_page`` loads a URL, records every network request the page makes,
reports each ``<img>`` (complete, naturalWidth), and takes a full-page screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--remote-debugging-pipe"]


def chromium_path() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        p = shutil.which(name) if not name.startswith("/") else (name if os.access(name, os.X_OK) else None)
        if p:
            return p
    return None


@dataclass
class PageResult:
    requests: list[str] = field(default_factory=list)  # URLs the page asked for
    images: list[dict] = field(default_factory=list)  # {src, complete, naturalWidth, naturalHeight}
    title: str = ""
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, proc, to_browser, from_browser):
        self.proc, self.w, self.r = proc, to_browser, from_browser
        self.next_id, self.buf, self.events = 0, b"", []

    def send(self, method, params=None, session=None, timeout=30.0):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method, timeout=30.0):
        deadline = time.monotonic() + timeout
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def _read(self, deadline):
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\0", 1)
        return json.loads(line)


class _Spawned:
    """A child started by ``os.posix_spawn``: wait for it, kill it (by its pid) if it hangs."""

    def __init__(self, pid: int):
        self.pid = pid

    def stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                return
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def open_page(url: str, *, width: int = 1280, height: int = 900, chromium: str | None = None) -> PageResult:
    exe = chromium or chromium_path()
    if exe is None:
        raise FileNotFoundError("chromium is not installed")
    profile = tempfile.mkdtemp(prefix="mbi-chromium-")
    r_in, w_in = os.pipe()  # we write, chromium reads (its fd 3)
    r_out, w_out = os.pipe()  # chromium writes (its fd 4), we read
    # posix_spawn, not fork: the test process runs JAX threads, and fork + threads can deadlock.
    hi_r, hi_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (r_in, w_out))
    argv = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
    actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
               (os.POSIX_SPAWN_DUP2, hi_r, 3), (os.POSIX_SPAWN_DUP2, hi_w, 4)]
    proc = _Spawned(os.posix_spawn(exe, argv, os.environ, file_actions=actions))
    for fd in (r_in, w_out, hi_r, hi_w):
        os.close(fd)
    pipe = _Pipe(proc, w_in, r_out)
    result = PageResult()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        pipe.send("Network.enable", session=sid)
        pipe.send("Page.enable", session=sid)
        pipe.send("Page.navigate", {"url": url}, session=sid)
        pipe.wait_event("Page.loadEventFired")
        result.requests = [m["params"]["request"]["url"] for m in pipe.events
                           if m.get("method") == "Network.requestWillBeSent"]
        js = ("JSON.stringify({title: document.title, images: Array.from(document.images).map(i => "
              "({src: i.src.slice(0, 64), complete: i.complete, naturalWidth: i.naturalWidth, "
              "naturalHeight: i.naturalHeight}))})")
        val = json.loads(pipe.send("Runtime.evaluate", {"expression": js, "returnByValue": True},
                                   session=sid)["result"]["value"])
        result.title, result.images = val["title"], val["images"]
        shot = pipe.send("Page.captureScreenshot", {"format": "png"}, session=sid)
        result.screenshot = base64.b64decode(shot["data"])
        # requests that started after load (none expected) are still recorded
        result.requests += [m["params"]["request"]["url"] for m in pipe.events
                            if m.get("method") == "Network.requestWillBeSent"
                            and m["params"]["request"]["url"] not in result.requests]
        try:
            pipe.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError):
            pass
    finally:
        os.close(w_in)
        os.close(r_out)
        proc.stop(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
    return result


def screenshot_to(path: Path, url: str, **kw) -> PageResult:
    res = open_page(url, **kw)
    Path(path).write_bytes(res.screenshot)
    return res
