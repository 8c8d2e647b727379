"""A real headless browser for the HTML report's tests, driven over the Chrome DevTools protocol.

The browser is Debian's ``chromium-headless-shell`` (``make browser`` installs it; ``.ci/run``
runs that through ``make test``). It is driven with ``--remote-debugging-pipe``: the DevTools
protocol's JSON messages, each ended by a NUL byte, on file descriptors 3 (to the browser) and 4
(from it) - the transport Puppeteer uses - so no client library and no network port is needed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time

#: binaries tried in order (the first is what `make browser` installs)
CANDIDATES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    """The headless browser's path: ``$KERAS_SECURE_BROWSER`` or the first of CANDIDATES."""
    explicit = os.environ.get("KERAS_SECURE_BROWSER")
    if explicit:
        return explicit
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


#: the browser the tests use (None: not installed here)
BROWSER = None  # set below, once find_browser is defined
#: why the browser tests skip when BROWSER is None
NO_BROWSER = ("no headless Chromium on this machine: `make browser` installs Debian's "
              "chromium-headless-shell with apt-get (it failed or was not run; set "
              "KERAS_SECURE_BROWSER to use another binary); the report's structure is still "
              "checked without a browser")


class BrowserError(RuntimeError):
    """The browser did not start, answered with an error or did not answer in time."""


class Browser:
    """One headless browser process and one page in it.

    Example:
        >>> with Browser(find_browser()) as browser:
        ...     result = browser.open("file:///tmp/report.html")
    """

    def __init__(self, binary: str, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="ks-browser-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the child's fds 3 and 4 are set in preexec_fn; keep ours above them so that dup2
        # cannot overwrite one with the other
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def child_fds():
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        args = [binary, "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu",
                "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars",
                "--mute-audio", f"--window-size={width},{height}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._log = tempfile.TemporaryFile()  # (a pipe nobody reads could fill and block it)
        try:
            self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=self._log,
                                             close_fds=False, preexec_fn=child_fds)
        finally:
            os.close(child_in)
            os.close(child_out)
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._in = os.fdopen(from_browser_r, "rb", buffering=0)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session = None
        self.width, self.height = width, height
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target,
                                 flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # -- protocol ------------------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError("the browser did not answer in time")
            chunk = self._in.read(65536)
            if not chunk:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-2000:]
                raise BrowserError(f"the browser closed its DevTools pipe: {err}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, **params):
        """Send one command (to the page's session once attached) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, event: str) -> dict:
        """Wait for the page's next ``event`` (e.g. ``"Page.loadEventFired"``)."""
        for i, seen in enumerate(self.events):
            if seen["method"] == event:
                return self.events.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if message.get("method") == event:
                return message
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    # -- what the tests use ----------------------------------------------------------------
    def open(self, url: str) -> dict:
        """Load ``url``, wait for its load event and report what the page shows.

        Returns:
            ``{"title", "text_length", "tables", "images": [{"alt", "complete",
            "naturalWidth", "naturalHeight", "scheme"}], "height", "errors": [...]}``; errors
            are the console's errors, uncaught exceptions, failed loads and blocked requests.
        """
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        # let images decode and late console messages arrive
        self.evaluate("Promise.all([...document.images].map(i => i.decode().catch(() => null)))"
                      ".then(() => new Promise(r => setTimeout(r, 200)))")
        page = self.evaluate(
            "({title: document.title, text_length: document.body.innerText.length,"
            " tables: document.querySelectorAll('table').length,"
            " height: document.documentElement.scrollHeight,"
            " images: [...document.images].map(i => ({alt: i.alt, complete: i.complete,"
            "   naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,"
            "   scheme: i.src.split(':')[0]}))})")
        self.call("Runtime.evaluate", expression="0")  # flush events queued before this point
        page["errors"] = self.errors()
        return page

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads seen since the last open."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                 "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                    for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"log ({params['entry'].get('source')}): "
                             f"{params['entry'].get('text')}")
            elif method == "Network.loadingFailed":
                found.append(f"load failed: {params.get('errorText')} "
                             f"{params.get('blockedReason') or ''}".strip())
        return found

    def screenshot(self, path: str, height: int | None = None) -> str:
        """Save a PNG of the page's top ``height`` CSS pixels (default: the viewport)."""
        clip = {"x": 0, "y": 0, "width": self.width, "height": height or self.height,
                "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            if self._process.poll() is None:
                try:
                    self.session = None
                    self.call("Browser.close")
                except (BrowserError, OSError, ValueError):
                    pass
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        finally:
            for stream in (self._out, self._in, self._log):
                try:
                    stream.close()
                except OSError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


BROWSER = find_browser()


def check_in_browser(path: str, screenshot: str | None = None) -> dict:
    """Open ``path`` in the headless browser; assert that it renders, that every image loaded
    (``naturalWidth > 0``) and that the console shows no error. Saves a 1280x1400 screenshot of
    the top of the page if asked."""
    with Browser(BROWSER) as browser:
        page = browser.open("file://" + os.path.abspath(path))
        if screenshot:
            browser.screenshot(screenshot, height=1400)
    assert page["errors"] == [], page["errors"]
    assert page["text_length"] > 500 and page["tables"] >= 2 and page["height"] > 900, page
    assert page["images"], "no image on the page"
    for image in page["images"]:
        assert image["scheme"] == "data"
        assert image["complete"] and image["naturalWidth"] > 0 and image["naturalHeight"] > 0, \
            image
    return page


# ------------------------------------------------------------------------------------------
# The page's structure, checked without a browser
# ------------------------------------------------------------------------------------------
def static_check(text: str) -> dict:
    """Parse an HTML report and check that it is self-contained and consistent.

    Asserts: a doctype, a Content-Security-Policy that forbids loading anything but ``data:``
    images, no script, every image a base64 ``data:`` URI whose bytes are a PNG (or JPEG/GIF/
    SVG) with a non-zero size, no reference to another file or site, and every ``#anchor``
    link pointing at an element of the page.

    Returns:
        ``{"images": [(width, height)], "tables": [[row cells]], "ids": set, "text": str,
        "classes": {class: count}}``.
    """
    import binascii
    import struct
    from html.parser import HTMLParser

    class Parser(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.tags, self.ids, self.links, self.images, self.text = [], set(), [], [], []
            self.tables, self.classes, self.csp, self._row, self._cell = [], {}, None, None, None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.tags.append(tag)
            if "id" in attrs:
                assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']!r}"
                self.ids.add(attrs["id"])
            for name in (attrs.get("class") or "").split():
                self.classes[name] = self.classes.get(name, 0) + 1
            if tag == "meta" and attrs.get("http-equiv", "").lower() == \
                    "content-security-policy":
                self.csp = attrs.get("content")
            for key in ("src", "href"):
                if key in attrs:
                    self.links.append((tag, key, attrs[key]))
            if tag == "table":
                self.tables.append([])
            elif tag == "tr" and self.tables:
                self._row = []
                self.tables[-1].append(self._row)
            elif tag in ("td", "th") and self._row is not None:
                self._cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self._cell is not None and self._row is not None:
                self._row.append("".join(self._cell).strip())
                self._cell = None

        def handle_data(self, data):
            self.text.append(data)
            if self._cell is not None:
                self._cell.append(data)

    assert text.lstrip().lower().startswith("<!doctype html>"), "no doctype"
    parser = Parser()
    parser.feed(text)
    parser.close()
    assert parser.csp and "default-src 'none'" in parser.csp and "img-src data:" in parser.csp, \
        parser.csp
    assert "script" not in parser.tags, "the report must not need scripts"
    sizes = []
    for tag, key, value in parser.links:
        if key == "href" and tag == "a":
            assert value.startswith("#") and value[1:] in parser.ids, \
                f"link {value!r} points at nothing in the page"
            continue
        assert value.startswith("data:"), f"<{tag} {key}={value[:60]!r}> is not embedded"
        if tag != "img":
            continue
        header, _, payload = value.partition(",")
        assert header.startswith("data:image/") and header.endswith(";base64"), header
        data = binascii.a2b_base64(payload)
        if header == "data:image/png;base64":
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
            sizes.append(struct.unpack(">II", data[16:24]))
        else:
            assert len(data) > 0
            sizes.append((None, None))
    return {"images": sizes, "tables": parser.tables, "ids": parser.ids,
            "text": " ".join(" ".join(parser.text).split()), "classes": parser.classes}
