"""``deepmetric serve INDEX_DIR``: a small web page to search an index with an image, safe to leave running.

Standard-library HTTP/1.1 server (a thread per connection), bound to localhost by default:

- ``GET /``: the page (upload a query image, or pick one of the indexed images, and see its nearest neighbours
  with their distances);
- ``POST /search?k=10``: body = the raw bytes of an image, or a ``multipart/form-data`` form with the image in a
  file field (and optionally a ``k`` field); answers JSON ``{"results": [{"id", "score", "distance", "label"?,
  "url"}], "match"?: {"matched", "label", "id", "distance", "confidence", "threshold"}}``, with ``match`` when the
  run is calibrated (``deepmetric calibrate``) or a threshold was given: the nearest hit within the threshold is a
  match, else none is;
- ``GET /search?id=N&k=10``: search with the N-th indexed image;
- ``GET /image?id=N``: an indexed image (for thumbnails).

Limits, each answered with a short JSON ``{"error": ...}`` that says what was wrong and what to do:

- ``Content-Length`` is checked before anything is read: missing (or chunked) → 411, not a non-negative integer →
  400, above ``max_upload_mb`` → 413; then exactly that many bytes are read, within ``timeout`` seconds (else 408);
- the image's width × height is read from its header before decoding: above ``max_pixels`` → 413 (PIL's
  ``DecompressionBombError`` too); across all requests at most ``max_pixels`` pixels are decoded at once;
- every socket operation times out after ``timeout`` seconds (idle keep-alive connections are closed);
- at most ``max_concurrent`` searches run at once; one more waits up to ``queue_wait`` seconds for a slot, then gets
  503 with ``Retry-After``; beyond ``max_connections`` open connections a new one gets 503 at once and is closed;
- the ``Host`` header must name this server (the bound address, localhost, 127.0.0.1, [::1], a name given in
  ``allow_hosts``; any IP address when bound to all interfaces), else 421: a page on another site cannot reach the
  server through DNS rebinding;
- the page inserts every text (file names, labels) with ``textContent``, and runs under a Content-Security-Policy
  that allows only its own script.
"""

from __future__ import annotations

import contextlib
import html
import io
import ipaddress
import json
import re
import secrets
import socket
import sys
import threading
import time
import traceback
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError
from .index import EmbeddingIndex
from .matching import decide, matching_rule
from .model import EmbeddingModel

DEFAULT_MAX_PIXELS = 40_000_000
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")  # what Pillow may try on uploads (JPEG: MPO too)
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".bmp": "image/bmp",
               ".gif": "image/gif", ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff",
               ".ppm": "image/x-portable-pixmap", ".pgm": "image/x-portable-graymap",
               ".pbm": "image/x-portable-bitmap"}  # fmt: skip
DRAIN_SECONDS, DRAIN_BYTES = 2.0, 64 << 20  # an unread body is discarded (bounded) so the client sees the answer
CHUNK = 1 << 16

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deepmetric search</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
#results { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 1em; }
.hit { width: 120px; text-align: center; font-size: 12px; overflow-wrap: anywhere; } .hit img { width: 112px;
  height: 112px; object-fit: contain; background: #eee; image-rendering: pixelated; }
#error { color: #b00; font-weight: bold; } #match { font-size: 1.2em; font-weight: bold; margin-top: 1em; }
#match.yes { color: #060; } #match.no { color: #a50; } #query img { max-width: 160px; max-height: 160px; }
</style></head><body>
<h1>deepmetric search</h1>
<p>Index: <b>__COUNT__</b> images, __KIND__ index, model <code>__MODEL__</code>.</p>
<p id="matching">__MATCHING__</p>
<form id="form" method="post" action="/search" enctype="multipart/form-data">
 <input type="file" id="file" name="file" accept="image/*">
 k <input type="number" id="k" name="k" value="10" min="1" max="100" style="width:4em">
 <button type="submit" id="search">Search</button>
 <button type="button" id="random">Random indexed image</button></form>
<p id="error"></p><div id="query"></div><div id="match"></div><div id="results"></div>
<script nonce="__NONCE__">
const $ = (id) => document.getElementById(id);
const results = $('results'), error = $('error'), query = $('query'), match = $('match');
function text(tag, value, className) {  // data only ever enters the page as text
  const node = document.createElement(tag);
  node.textContent = value;
  if (className) node.className = className;
  return node;
}
function showMatch(m) {  // the calibrated answer, when the server has a threshold
  match.textContent = '';
  match.className = '';
  if (!m) return;
  const conf = (m.confidence === null || m.confidence === undefined) ? '' :
    ', confidence ' + Number(m.confidence).toFixed(2);
  if (m.matched) {
    match.textContent = 'match: ' + String(m.label) + ' (distance ' + Number(m.distance).toFixed(4) + conf + ')';
    match.className = 'yes';
  } else {
    match.textContent = 'no match: the nearest image is at distance ' + Number(m.distance).toFixed(4) +
      ' > threshold ' + Number(m.threshold).toFixed(4) + conf;
    match.className = 'no';
  }
}
function show(data, status) {
  results.replaceChildren();
  showMatch(null);
  if (status !== 200 || !data || !Array.isArray(data.results)) {
    error.textContent = (data && data.error) || ('error ' + status);
    return;
  }
  error.textContent = '';
  showMatch(data.match);
  for (const hit of data.results) {
    const div = document.createElement('div');
    div.className = 'hit';
    const img = document.createElement('img');
    img.src = hit.url;
    img.alt = String(hit.id);
    div.append(img, text('div', String(hit.id).split(/[\\\\/]/).pop(), 'name'));
    if (hit.label !== undefined && hit.label !== null) div.append(text('div', String(hit.label), 'label'));
    div.append(text('div', 'd = ' + Number(hit.distance).toFixed(4), 'distance'));
    div.title = String(hit.id);
    results.appendChild(div);
  }
}
async function run(request) {
  let response, data = null;
  try { response = await request; } catch (e) { show({error: 'the server did not answer: ' + e}, 0); return; }
  try { data = await response.json(); } catch (e) { data = null; }
  show(data, response.status);
}
$('form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const file = $('file').files[0];
  if (!file) { error.textContent = 'choose an image first'; return; }
  query.replaceChildren();
  const form = new FormData();
  form.append('file', file, file.name);
  await run(fetch('/search?k=' + encodeURIComponent($('k').value), {method: 'POST', body: form}));
});
$('random').addEventListener('click', async () => {
  const id = Math.floor(Math.random() * __COUNT__);
  const img = document.createElement('img');
  img.src = '/image?id=' + id;
  query.replaceChildren(document.createTextNode('query: '), img);
  await run(fetch('/search?id=' + id + '&k=' + encodeURIComponent($('k').value)));
});
</script></body></html>
"""

# Only the page's own script runs (nonce): injected markup cannot run handlers. 'unsafe-eval' lets browser automation
# evaluate predicates in the page (Playwright's wait_for_function); the page itself never evaluates strings.
CSP = (
    "default-src 'none'; script-src 'nonce-{nonce}' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)

HINTS = {  # what to do, for the errors the standard library itself answers
    400: "send a well-formed HTTP/1.1 request",
    414: "shorten the URL",
    431: "send fewer or shorter headers",
    501: "this server answers GET /, GET /search, GET /image and POST /search",
    505: "use HTTP/1.0 or HTTP/1.1",
}


class RequestError(Exception):
    """A request the server refuses: the HTTP status, a message that names the problem and the fix, and whether the
    connection must end (the rest of the stream cannot be read as a next request)."""

    def __init__(self, status: int, message: str, close: bool = False):
        super().__init__(message)
        self.status, self.message, self.close = status, message, close


class PixelBudget:
    """At most ``total`` image pixels decoded at once across all requests (a larger request waits for the rest)."""

    def __init__(self, total: int):
        self.total, self.used = total, 0
        self.cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        pixels = min(pixels, self.total)
        with self.cond:
            self.cond.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            with self.cond:
                self.used -= pixels
                self.cond.notify_all()


class SearchService:
    """The index, its model and the limits, shared by the request handlers (a lock serialises model calls)."""

    def __init__(self, index_dir: str | Path, max_upload_mb: float = 10.0, device: str | None = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, timeout: float = 30.0, max_concurrent: int = 16,
                 queue_wait: float = 5.0, root: str | Path | None = None, threshold: float | None = None):  # fmt: skip
        for name, value in (("max_upload_mb", max_upload_mb), ("max_pixels", max_pixels), ("timeout", timeout),
                            ("max_concurrent", max_concurrent)):  # fmt: skip
            if not value > 0:
                raise ConfigError(f"serve: {name} = {value!r} must be positive")
        if not queue_wait >= 0:
            raise ConfigError(f"serve: queue_wait = {queue_wait!r} must be 0 or more seconds")
        self.index = EmbeddingIndex.load(index_dir, root=root)
        model = self.index.model
        if not model.get("run_dir"):
            raise ValueError(f"{index_dir} records no model; build it with `deepmetric index build`")
        self.model = EmbeddingModel.load(model["run_dir"], model.get("checkpoint", "best"), device)
        self.index.check_model(self.model.source)
        self.threshold, self.calibration = matching_rule(self.model, threshold)
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.max_upload_mb = max_upload_mb
        self.max_pixels, self.timeout = int(max_pixels), float(timeout)
        self.max_concurrent, self.queue_wait = int(max_concurrent), float(queue_wait)
        self.slots = threading.BoundedSemaphore(self.max_concurrent)
        self.running = 0  # searches holding a slot
        self._running_lock = threading.Lock()
        self.pixels = PixelBudget(self.max_pixels)
        self.lock = threading.Lock()
        self.position = {i: n for n, i in enumerate(self.index.ids)}

    def acquire(self) -> bool:
        """A search slot, waiting up to ``queue_wait`` seconds; False when none came free (release it after)."""
        if not self.slots.acquire(timeout=self.queue_wait):
            return False
        with self._running_lock:
            self.running += 1
        return True

    def release(self) -> None:
        with self._running_lock:
            self.running -= 1
        self.slots.release()

    def k(self, value) -> int:
        """``k`` from a query string or form: 10 if absent or not a number, clipped to 1 … min(100, N)."""
        try:
            k = int(value)
        except (TypeError, ValueError):
            k = 10
        return max(1, min(100, len(self.index), k))

    def _search(self, image, k: int) -> list[dict]:
        with self.lock:
            hits = self.index.query(self.model.embed(image).numpy(), k)[0]
        for hit in hits:
            hit["url"] = f"/image?id={self.position[hit['id']]}"
        return hits

    def answer(self, hits: list[dict]) -> dict:
        """The JSON answer: the hits, and the match decision when the server has a threshold."""
        out: dict = {"results": hits}
        if self.threshold is not None:
            found = decide(hits, self.threshold, self.calibration)
            out["match"] = found.as_dict() if found is not None else None
        return out

    def matching_line(self) -> str:
        """How matches are decided, for the page."""
        if self.threshold is None:
            return "No match threshold: run `deepmetric calibrate RUN` to answer match / no match."
        if self.calibration is None:
            return f"Match threshold {self.threshold:.4f} (given with --threshold)."
        on = self.calibration.record.get("calibrated_on", {})
        where = "the validation split" if "split" in on else on.get("images", "labelled images")
        achieved = self.calibration.record["achieved"]
        return (f"Match threshold {self.threshold:.4f}, calibrated for {self.calibration.target} on {where} "
                f"(precision {achieved['precision']:.3f}, recall {achieved['recall']:.3f} there).")  # fmt: skip

    def search_image(self, image: Image.Image, k: int) -> list[dict]:
        """Neighbours of a decoded PIL image."""
        return self._search([image], k)

    def search_file(self, source, k: int, formats=UPLOAD_FORMATS) -> list[dict]:
        """Neighbours of an encoded image (bytes, a path or a file object), its size checked before decoding.

        Raises `RequestError`: 413 above ``max_pixels`` (or a decompression bomb), 400 when it cannot be decoded."""
        if isinstance(source, bytes | bytearray):
            source = io.BytesIO(source)
        fix = f"send a {', '.join(formats)} file" if formats else "check the file"
        try:
            img = Image.open(source, formats=formats)  # reads the header only
        except Image.DecompressionBombError as e:
            raise RequestError(413, f"image too large to decode ({e}); send a smaller image") from None
        except UnidentifiedImageError:
            raise RequestError(400, f"not an image (not recognised as one); {fix}") from None
        except Exception as e:  # (every other way an upload can fail to be an image)
            raise RequestError(400, f"not an image (could not decode it: {type(e).__name__}); {fix}") from None
        with img:
            width, height = img.size
            if width * height > self.max_pixels:
                raise RequestError(413, f"image too large: {width} × {height} = {width * height / 1e6:.1f} megapixels "
                                        f"> the limit of {self.max_pixels / 1e6:g} (--max-pixels); send a smaller "
                                        "image")  # fmt: skip
            try:
                with self.pixels.hold(width * height):
                    tensor = self.model.to_uint8(img)  # decode, orientation, mode, resize to the load size
            except Image.DecompressionBombError as e:
                raise RequestError(413, f"image too large to decode ({e}); send a smaller image") from None
            except Exception as e:  # (truncated or corrupt data)
                raise RequestError(400, f"not an image (could not decode it: {type(e).__name__}: {e}); {fix}") from None
        return self._search(tensor.unsqueeze(0), k)

    def page(self, nonce: str) -> str:
        """The search page, its script marked with ``nonce`` (the Content-Security-Policy's)."""
        return (PAGE.replace("__COUNT__", str(len(self.index))).replace("__KIND__", html.escape(self.index.kind))
                .replace("__MODEL__", html.escape(str(self.index.model.get("run_dir", "?"))))
                .replace("__MATCHING__", html.escape(self.matching_line())).replace("__NONCE__", nonce))  # fmt: skip


def parse_multipart(content_type: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    """``(file bytes, text fields)`` of a ``multipart/form-data`` body (stdlib ``email`` parser); the file is the
    first part with a file name, or the part named ``file``. Raises `RequestError` (400) when there is none."""
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    msg = BytesParser(policy=HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise RequestError(400, "malformed multipart/form-data (no boundary, or no parts): send the image as a form "
                                "file field, or as the raw request body")  # fmt: skip
    data, fields = None, {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if data is None and (part.get_filename() is not None or name == "file"):
            data = payload
        elif name and len(fields) < 20:
            fields[str(name)] = payload[:100].decode("utf-8", "replace")
    if data is None:
        raise RequestError(400, "the form has no file: send the image in a file field (named 'file')")
    if not data:
        raise RequestError(400, "the form's file field is empty: choose an image")
    return data, fields


class HostCheck:
    """The ``Host`` values this server answers (DNS-rebinding protection): the bound address, localhost, 127.0.0.1,
    ::1 and the ``allow`` names ("*": any); bound to all interfaces, also any IP address and this machine's name."""

    def __init__(self, bound: str, allow=()):
        self.any = "*" in allow
        self.names = {"localhost", "127.0.0.1", "::1"} | {_clean(n) for n in allow if n != "*"}
        bound = _clean(bound)
        self.wildcard = bound in ("", "0.0.0.0", "::")
        self.names |= {_clean(socket.gethostname())} if self.wildcard else {bound}

    def problem(self, values: list[str] | None) -> tuple[int, str] | None:
        """None when the request's Host header is acceptable, else ``(status, message)``."""
        if not values:
            return 400, "missing Host header: send 'Host: ADDRESS:PORT' (the address you opened)"
        if len(values) > 1:
            return 400, "several Host headers: send one"
        name = host_name(values[0])
        if name is None:
            return 400, f"malformed Host header {values[0][:60]!r}: send 'Host: ADDRESS:PORT'"
        if self.any or name in self.names or (self.wildcard and _is_ip(name)):
            return None
        shown = ", ".join(sorted(self.names))
        return 421, (f"this server does not answer for Host {name[:60]!r} (DNS-rebinding protection): open it as one "
                     f"of {shown}, or start it with --allow-host {name[:60]}")  # fmt: skip


def _clean(name: str) -> str:
    return name.strip().strip("[]").lower().rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_name(value: str) -> str | None:
    """The host of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), lower-case; None if malformed."""
    v = value.strip().lower()
    if v.startswith("["):
        end = v.find("]")
        name, rest = (v[1:end], v[end + 1 :]) if end > 0 else ("", "")
        ok = _is_ip(name) and re.fullmatch(r"(:[0-9]{1,5})?", rest) is not None
        return name if ok else None
    if v.count(":") > 1:  # a bare IPv6 address (lenient)
        return v if _is_ip(v) else None
    name, _, port = v.partition(":")
    if (port or ":" in v) and not re.fullmatch(r"[0-9]{1,5}", port):
        return None
    name = name.rstrip(".")
    return name if re.fullmatch(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?", name) else None


def make_handler(service: SearchService, hosts: HostCheck):
    """The request handler class bound to ``service`` and the ``hosts`` check."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive; idle connections end after `timeout`
        server_version, sys_version = "deepmetric", ""
        timeout = service.timeout  # every socket read and write (StreamRequestHandler.setup)
        disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall between them
        _expect_continue = _responded = _close_after = False  # per request (reset in parse_request)

        def log_message(self, fmt, *args):  # quiet: one line per request on stderr is noise for a local tool
            pass

        # ------------------------------------------------------------------------------ responses
        def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None,
                  close: bool = False) -> None:  # fmt: skip
            if self.request_version == "HTTP/0.9":  # answer with a status line and headers all the same
                self.request_version = "HTTP/1.0"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Cache-Control", "no-store")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if close or self._close_after:
                self.send_header("Connection", "close")  # also sets close_connection
            self.end_headers()
            self.wfile.write(body)
            self._responded = True

        def _json(self, status: int, obj, headers: dict | None = None, close: bool = False) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json", headers, close)

        def _error(self, status: int, message: str, headers: dict | None = None, close: bool = False) -> None:
            self._json(status, {"error": message}, headers, close)

        def _refuse_unread(self, status: int, message: str, length: int | None, headers: dict | None = None):
            """Answer before reading the body, then end the connection: half-close (the client sees the answer and
            the end), discard what it still sends (bounded), so that closing does not reset the connection."""
            self._error(status, message, headers, close=True)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
                if self._expect_continue:
                    return
                left = min(DRAIN_BYTES, length if length is not None else CHUNK)
                deadline = time.monotonic() + DRAIN_SECONDS
                while left > 0 and (remaining := deadline - time.monotonic()) > 0:
                    self.connection.settimeout(remaining)
                    chunk = self.rfile.read1(min(left, CHUNK))
                    if not chunk:
                        break
                    left -= len(chunk)

        def send_error(self, code, message=None, explain=None):
            """The standard library's own errors (bad request line, unsupported method, ...) as JSON too."""
            code = int(code)
            text = message or explain or HTTPStatus(code).phrase
            hint = HINTS.get(code)
            self._close_after = True
            self._error(code, f"{text}; {hint}" if hint else text, close=True)

        # ------------------------------------------------------------------------------ request checks
        def parse_request(self):
            self._expect_continue, self._responded, self._close_after = False, False, False
            if not super().parse_request():
                return False
            problem = hosts.problem(self.headers.get_all("Host"))
            if problem is not None:
                declared = (self.headers.get("Content-Length") or "").strip()
                self._refuse_unread(*problem, int(declared) if re.fullmatch(r"[0-9]{1,18}", declared) else None)
                return False
            self._close_after = bool(self.headers.get("Transfer-Encoding")) or (
                self.command != "POST" and self.headers.get("Content-Length", "0").strip() not in ("", "0")
            )  # a body this server does not read: the connection cannot carry another request
            return True

        def handle_expect_100(self):
            self._expect_continue = True  # "100 Continue" only once the upload passed the checks (do_POST)
            return True

        def _content_length(self) -> int:
            if self.headers.get("Transfer-Encoding"):
                raise RequestError(411, "chunked uploads (Transfer-Encoding) are not supported: send the image with "
                                        "a Content-Length header")  # fmt: skip
            values = self.headers.get_all("Content-Length") or []
            if not values:
                raise RequestError(411, "Content-Length required: send the image as the request body (or a "
                                        "multipart form) with its size in bytes in Content-Length")  # fmt: skip
            if len({v.strip() for v in values}) > 1:
                raise RequestError(400, "conflicting Content-Length headers: send one")
            value = values[0].strip()
            if not re.fullmatch(r"[0-9]{1,18}", value):
                raise RequestError(400, f"invalid Content-Length {value[:40]!r}: it must be the body's size in bytes, "
                                        "a non-negative integer")  # fmt: skip
            return int(value)

        def _read_body(self, length: int) -> bytes:
            """Exactly ``length`` bytes, all within ``timeout`` seconds (a trickling client cannot hold a slot)."""
            buf = bytearray()
            deadline = time.monotonic() + service.timeout
            while len(buf) < length:
                try:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError
                    self.connection.settimeout(remaining)
                    chunk = self.rfile.read1(min(length - len(buf), CHUNK))
                except TimeoutError:
                    raise RequestError(408, f"the request body did not arrive within {service.timeout:g} s "
                                            "(--timeout): send it at once", close=True) from None  # fmt: skip
                if not chunk:
                    raise RequestError(400, f"the body ended after {len(buf)} of the {length} bytes that "
                                            "Content-Length announced: send the whole image", close=True)  # fmt: skip
                buf += chunk
            self.connection.settimeout(service.timeout)
            return bytes(buf)

        # ------------------------------------------------------------------------------ methods
        def _guarded(self, method) -> None:
            try:
                method()
            except RequestError as e:
                with contextlib.suppress(OSError):
                    self._error(e.status, e.message, close=e.close)
            except _Answered:
                self.close_connection = True
            except (ConnectionError, TimeoutError):  # the client went away or stopped reading: nothing more to say
                self.close_connection = True
            except Exception as e:  # (one failed request must not stop the server)
                traceback.print_exc(file=sys.stderr)
                self.close_connection = True
                if not self._responded:
                    with contextlib.suppress(OSError):
                        self._error(500, f"internal error ({type(e).__name__}: {e}); the server keeps running, "
                                         "see its log", close=True)  # fmt: skip

        def do_GET(self):
            self._guarded(self._get)

        def do_POST(self):
            self._guarded(self._post)

        def _get(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/":
                nonce = secrets.token_urlsafe(16)
                return self._send(200, service.page(nonce).encode(), "text/html; charset=utf-8",
                                  {"Content-Security-Policy": CSP.format(nonce=nonce),
                                   "Referrer-Policy": "no-referrer"})  # fmt: skip
            if url.path not in ("/image", "/search"):
                return self._error(404, f"no such page: {url.path[:100]} (the page is at /)")
            try:
                n = int(query["id"][0])
                path = service.index.ids[n] if n >= 0 else None
            except (KeyError, ValueError, IndexError):
                path = None
            if path is None:
                return self._error(404, f"unknown image id: give id=0 … {len(service.index) - 1}")
            if url.path == "/image":
                try:
                    data = Path(path).read_bytes()
                except OSError:
                    return self._error(404, f"indexed image no longer readable: {path}")
                return self._send(200, data, IMAGE_TYPES.get(Path(path).suffix.lower(), "application/octet-stream"))
            with self._slot(0):
                try:
                    hits = service.search_file(path, service.k(query.get("k", [None])[0]), formats=None)
                except RequestError as e:
                    return self._error(404 if e.status == 400 else e.status, f"indexed image: {e.message}")
            return self._json(200, service.answer(hits))

        @contextlib.contextmanager
        def _slot(self, length: int | None):
            if not service.acquire():
                self._refuse_unread(503, f"busy: {service.max_concurrent} searches are running (--max-concurrent) "
                                         f"and none finished within {service.queue_wait:g} s; retry in a moment",
                                    length, {"Retry-After": "1"})  # fmt: skip
                raise _Answered
            try:
                yield
            finally:
                service.release()

        def _post(self):
            url = urlparse(self.path)
            try:
                length = self._content_length()
            except RequestError as e:
                return self._refuse_unread(e.status, e.message, None)
            if url.path != "/search":
                return self._refuse_unread(404, f"no such endpoint: POST {url.path[:100]} (send images to "
                                                "POST /search)", length)  # fmt: skip
            if length > service.max_upload:
                return self._refuse_unread(413, f"image too large: {length} bytes ({length / 1024 / 1024:.2f} MB) > "
                                                f"the limit of {service.max_upload_mb:g} MB (--max-upload-mb); send "
                                                "a smaller image", length)  # fmt: skip
            if length == 0:
                return self._error(400, "empty upload: send the bytes of an image as the body, or a multipart form "
                                        "with a file field")  # fmt: skip
            with self._slot(length):
                if self._expect_continue:
                    self.send_response_only(HTTPStatus.CONTINUE)
                    self.end_headers()
                body = self._read_body(length)
                k = parse_qs(url.query).get("k", [None])[0]
                content_type = self.headers.get("Content-Type", "")
                if content_type.split(";")[0].strip().lower() == "multipart/form-data":
                    body, fields = parse_multipart(content_type, body)
                    k = fields.get("k", k)
                hits = service.search_file(body, service.k(k))
            return self._json(200, service.answer(hits))

    return Handler


class _Answered(Exception):
    """Raised out of a handler that has already answered (and closed) the request."""


class SearchServer(ThreadingHTTPServer):
    """`ThreadingHTTPServer` with a listen backlog for bursts of clients and a cap on open connections (one more
    gets 503 at once, from the accepting thread, and is closed)."""

    daemon_threads = True
    request_queue_size = 128
    BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")  # fmt: skip

    def __init__(self, address, handler, service: SearchService, max_connections: int):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.service, self.max_connections = service, max_connections
        self.open_connections = 0
        self._count = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self._count:
            full = self.open_connections >= self.max_connections
            if not full:
                self.open_connections += 1
        if full:
            body = json.dumps({"error": f"busy: {self.max_connections} connections are open (--max-connections); "
                                        "retry in a moment"}).encode()  # fmt: skip
            with contextlib.suppress(OSError):
                request.settimeout(0.5)
                request.sendall(self.BUSY % (len(body), body))
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            with self._count:
                self.open_connections -= 1
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._count:
                self.open_connections -= 1


def make_server(index_dir, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0,
                device: str | None = None, *, max_pixels: int = DEFAULT_MAX_PIXELS, timeout: float = 30.0,
                max_concurrent: int = 16, queue_wait: float = 5.0, max_connections: int = 64, allow_hosts=(),
                root: str | Path | None = None, threshold: float | None = None) -> SearchServer:  # fmt: skip
    """A ready server (``serve_forever()`` to run it); port 0 picks a free port (``server.server_address``).
    The limits are described in the module docstring."""
    if not max_connections >= max_concurrent:
        raise ConfigError(f"serve: max_connections = {max_connections} must be at least max_concurrent = "
                          f"{max_concurrent}")  # fmt: skip
    service = SearchService(index_dir, max_upload_mb, device, max_pixels=max_pixels, timeout=timeout,
                            max_concurrent=max_concurrent, queue_wait=queue_wait, root=root,
                            threshold=threshold)  # fmt: skip
    return SearchServer((host, port), make_handler(service, HostCheck(host, allow_hosts)), service, max_connections)
