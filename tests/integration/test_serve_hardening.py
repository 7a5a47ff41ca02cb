"""`deepmetric serve` left running: each fault of issue #21 (5) reproduced with raw sockets / http.client.

Content-Length (missing, negative, not a number, over the limit) answered before anything is read; a huge-but-small
PNG refused from its header (and the server's memory stays flat); idle and trickling connections closed after the
timeout; the concurrency and connection caps answered with 503; a foreign Host refused (DNS rebinding); file names
shown as text in a real browser (no stored XSS); multipart form uploads; every error a short JSON message.
"""

import http.client
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import deepmetric
from deepmetric.cli import main
from deepmetric.retrieval.serve import HostCheck, host_name, make_server

from ..conftest import write_digit_pngs

XSS_LABEL = "<svg onload=window.pwned=2>"
XSS_NAME = "<img src=x onerror=window.pwned=1>.png"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """sklearn digits as 16 × 16 PNG files, one folder per class (12 per class)."""
    return write_digit_pngs(tmp_path_factory.mktemp("serve_digits"), 12, size=16)


@pytest.fixture(scope="module")
def index(images, tmp_path_factory):
    """A run trained one epoch on the digits, and an index of them plus a class and a file named with markup."""
    base = tmp_path_factory.mktemp("serve_run")
    deepmetric.train(
        None, output=base / "run", quiet=True, data__name="folder", data__root=str(images), data__classes_per_batch=5,
        data__samples_per_class=8, data__load_size=16, protocol__name="zero_shot",
        protocol__train_classes="[0,1,2,3,4]", augment__train="none", augment__eval="resize_center_crop",
        augment__resize=14, augment__size=12, augment__normalization="gray", model__width=8,
        model__embedding_dim=16, train__epochs=1, report__enabled=False,
    )  # fmt: skip
    catalogue = base / "catalogue"
    shutil.copytree(images, catalogue)
    (catalogue / XSS_LABEL).mkdir()
    with Image.open(images / "digit_8" / "3.png") as img:  # an image of its own: its nearest neighbour is itself
        img.transpose(Image.Transpose.ROTATE_90).save(catalogue / XSS_LABEL / XSS_NAME)
    assert main(["index", "build", str(base / "run"), "--images", str(catalogue), "--out", str(base / "index"),
                 "--quiet"]) == 0  # fmt: skip
    return base / "index"


@pytest.fixture
def serve(index):
    """``serve(**limits)`` → a running in-process server (shut down after the test)."""
    servers = []

    def start(**limits):
        srv = make_server(index, port=0, **limits)
        threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def png(images, name="digit_1/3.png") -> bytes:
    return (images / name).read_bytes()


def big_png(width: int, height: int) -> bytes:
    """A one-colour 1-bit PNG of any size, written directly (a few kB; nothing allocated at full size)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" + bytes((width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def connect(srv, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=timeout)


def exchange(srv, head: str, body: bytes = b"", host: str | None = "default", timeout: float = 10.0):
    """Send a raw request (``head``: request line and headers, without Host unless ``host`` says otherwise);
    ``(status, headers, parsed JSON or raw body, closed)``: ``closed`` is whether the server ended the connection."""
    if host == "default":
        host = f"127.0.0.1:{srv.server_address[1]}"
    lines = head.rstrip("\r\n") + (f"\r\nHost: {host}" if host else "") + "\r\n\r\n"
    with connect(srv, timeout) as s:
        s.sendall(lines.encode("latin-1") + body)
        r = http.client.HTTPResponse(s)
        r.begin()
        data = r.read()
        closed = False
        if r.will_close:  # said so: check that it did
            s.settimeout(2)
            closed = s.recv(1) == b""
    is_json = r.headers.get("Content-Type", "").startswith("application/json")
    return r.status, r.headers, json.loads(data) if is_json else data, closed


def post(srv, body: bytes, path="/search?k=3", content_type="application/octet-stream", host=None, timeout=30.0):
    """POST with http.client; ``(status, headers, JSON)``."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=timeout)
    headers = {"Content-Type": content_type} | ({"Host": host} if host else {})
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.headers, json.loads(r.read())
    finally:
        conn.close()


def multipart(fields: dict[str, str], file: bytes | None, filename="query.png") -> tuple[bytes, str]:
    boundary = "----deepmetricTestBoundary7MA4YWxk"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]  # fmt: skip
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + file + b"\r\n")  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ------------------------------------------------------------------------------------------ Content-Length
@pytest.mark.parametrize(
    ("header", "status", "words"),
    [
        ("", 411, "Content-Length required"),
        ("Content-Length: -1", 400, "invalid Content-Length '-1'"),
        ("Content-Length: abc", 400, "invalid Content-Length 'abc'"),
        ("Content-Length: 99999999999", 413, "the limit of 10 MB"),
        ("Transfer-Encoding: chunked", 411, "chunked uploads"),
        ("Content-Length: 5\r\nContent-Length: 6", 400, "conflicting Content-Length"),
    ],
)
def test_content_length_is_checked_before_reading(serve, header, status, words):
    """The old server read to the end of the stream for -1 (and for a missing length read nothing and searched
    an empty body): here the answer comes at once, the body unread, and the connection ends."""
    srv = serve()
    t0 = time.monotonic()
    got, _, body, closed = exchange(srv, "POST /search HTTP/1.1\r\n" + header, timeout=5)
    assert (got, closed) == (status, True) and words in body["error"] and time.monotonic() - t0 < 3


def test_exactly_content_length_bytes_are_read(serve, images):
    """A request pipelined right behind the image is answered as its own request, not read as part of it."""
    srv = serve()
    data = png(images)
    second = b"GET /search?id=4&k=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with connect(srv) as s:
        s.sendall(f"POST /search?k=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                  + data + second)  # fmt: skip
        raw = b"".join(iter(lambda: s.recv(65536), b""))  # the second request asks to close after its answer
    answers = []
    while raw:
        head, _, raw = raw.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: ([0-9]+)", head)[1])
        answers.append((int(head.split()[1]), json.loads(raw[:length])))
        raw = raw[length:]
    assert [a[0] for a in answers] == [200, 200]
    assert len(answers[0][1]["results"]) == 3 and len(answers[1][1]["results"]) == 2
    assert answers[0][1]["results"][0]["distance"] < 1e-3


def test_upload_limit_and_short_body(serve, images):
    srv = serve(max_upload_mb=0.01, timeout=0.5)
    status, _, body = post(srv, b"\x89PNG" + bytes(20_000))  # the client sends it all: it still reads the answer
    assert status == 413 and "20004 bytes" in body["error"] and "--max-upload-mb" in body["error"]
    t0 = time.monotonic()  # announces 100 bytes, sends 10, then waits: 408 after the timeout, not a hung thread
    status, _, body, closed = exchange(srv, "POST /search HTTP/1.1\r\nContent-Length: 100", b"x" * 10)
    assert (status, closed) == (408, True) and "--timeout" in body["error"] and time.monotonic() - t0 < 3
    status, _, body = post(srv, png(images))  # still serving
    assert status == 200 and len(body["results"]) == 3


# ------------------------------------------------------------------------------------------ pixels
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_checked_from_the_header(serve, images):
    srv = serve()
    huge = big_png(12_000, 12_000)
    assert len(huge) < 100_000
    with Image.open(io.BytesIO(huge)) as img:
        assert img.size == (12_000, 12_000)
    t0 = time.monotonic()
    status, _, body = post(srv, huge)
    assert status == 413 and "12000 × 12000 = 144.0 megapixels" in body["error"] and "--max-pixels" in body["error"]
    assert time.monotonic() - t0 < 2  # refused from the header: decoding 144 MP would take longer
    form, content_type = multipart({}, huge)
    status, _, body = post(srv, form, content_type=content_type)
    assert status == 413 and "--max-pixels" in body["error"]
    small = serve(max_pixels=200)  # a 16 × 16 digit is 256 pixels
    status, _, body = post(small, png(images))
    assert status == 413 and "16 × 16" in body["error"]
    status, _, body = post(srv, png(images))
    assert status == 200


def test_decompression_bomb_guard(serve):
    srv = serve(max_pixels=10**12)  # past our limit: Pillow's own guard (2 × Image.MAX_IMAGE_PIXELS) answers
    status, _, body = post(srv, big_png(20_000, 20_000))
    assert status == 413 and "too large to decode" in body["error"]


def test_cli_server_memory_stays_flat_under_huge_images(index, images):
    """The CLI flags, end to end; four 12,000² PNGs at once (3.25 GB in the old server) leave the peak RSS flat."""
    cmd = [sys.executable, "-m", "deepmetric", "serve", str(index), "--port", "0", "--max-pixels", "20e6",
           "--timeout", "5", "--max-concurrent", "4", "--allow-host", "search.lan"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read()
        port = int(line.rsplit(":", 1)[1].split("/")[0])

        class Srv:
            server_address = ("127.0.0.1", port)

        def hwm_kb() -> int:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            return int(status.split("VmHWM:")[1].split()[0])

        assert post(Srv, png(images))[0] == 200  # warm: the first search initialises torch
        before = hwm_kb()
        huge = big_png(12_000, 12_000)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post(Srv, huge), range(4)))
        assert all(s == 413 and "the limit of 20" in b["error"] for s, _, b in answers)
        assert hwm_kb() - before < 100_000  # kB; one decode alone would take 144 MB
        assert exchange(Srv, "GET / HTTP/1.1\r\nConnection: close", host=f"search.lan:{port}")[0] == 200
        assert exchange(Srv, "GET / HTTP/1.1\r\nConnection: close", host="evil.example")[0] == 421
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------ timeouts, caps
def test_idle_connections_are_closed_after_the_timeout(serve):
    srv = serve(timeout=0.5)
    idle = [connect(srv) for _ in range(10)]
    assert wait_for(lambda: srv.open_connections == 10)
    with connect(srv) as kept:  # keep-alive: idle after one answer
        kept.sendall(f"GET /search?id=1&k=1 HTTP/1.1\r\nHost: 127.0.0.1:{srv.server_address[1]}\r\n\r\n".encode())
        r = http.client.HTTPResponse(kept)
        r.begin()
        assert r.status == 200 and not r.will_close
        r.read()
        t0 = time.monotonic()
        assert kept.recv(1) == b"" and time.monotonic() - t0 < 3
    for s in idle:
        assert s.recv(1) == b""  # closed by the server (the socket's own timeout is 10 s)
        s.close()
    assert wait_for(lambda: srv.open_connections == 0)


def test_concurrency_limit_answers_503_then_recovers(serve, images):
    srv = serve(max_concurrent=1, queue_wait=0)
    data = png(images)
    holder = connect(srv)  # holds the only slot: its upload is half sent
    holder.sendall(f"POST /search?k=2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                   + data[:10])  # fmt: skip
    assert wait_for(lambda: srv.service.running == 1)
    t0 = time.monotonic()
    status, headers, body = post(srv, data)
    assert status == 503 and headers["Retry-After"] == "1" and "--max-concurrent" in body["error"]
    assert time.monotonic() - t0 < 2
    holder.sendall(data[10:])
    r = http.client.HTTPResponse(holder)
    r.begin()
    assert r.status == 200 and len(json.loads(r.read())["results"]) == 2
    holder.close()
    assert post(srv, data)[0] == 200

    queued = serve(max_concurrent=1, queue_wait=10)  # with a queue wait, the second search waits its turn
    holder = connect(queued)
    holder.sendall(f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                   + data[:10])  # fmt: skip
    assert wait_for(lambda: queued.service.running == 1)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(post, queued, data)
        time.sleep(0.3)
        assert not waiting.done()
        holder.sendall(data[10:])
        assert waiting.result(timeout=10)[0] == 200
    holder.close()


def test_connection_cap_answers_503_at_once(serve, images):
    srv = serve(max_concurrent=1, max_connections=2)
    idle = [connect(srv) for _ in range(2)]
    assert wait_for(lambda: srv.open_connections == 2)
    status, headers, body, closed = exchange(srv, "GET / HTTP/1.1")
    assert (status, closed) == (503, True) and headers["Retry-After"] == "1" and "--max-connections" in body["error"]
    for s in idle:
        s.close()
    assert wait_for(lambda: srv.open_connections == 0)
    assert post(srv, png(images))[0] == 200


def test_32_clients_get_no_resets(serve, images):
    """The listen backlog (5 in the old server) holds a burst of 32 new connections."""
    srv = serve()
    data = png(images)
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda _: post(srv, data)[0], range(96)))
    assert statuses == [200] * 96


# ------------------------------------------------------------------------------------------ Host
def test_host_header_is_checked(serve, images):
    srv = serve()
    port = srv.server_address[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost", "LOCALHOST."):
        assert exchange(srv, "GET / HTTP/1.1", host=host)[0] == 200, host
    status, _, body, closed = exchange(srv, "GET / HTTP/1.1", host=f"evil.example:{port}")
    assert (status, closed) == (421, True) and "--allow-host evil.example" in body["error"]
    status, _, body = post(srv, png(images), host=f"rebind.attacker.test:{port}")
    assert status == 421 and "DNS-rebinding" in body["error"]
    status, _, body, _ = exchange(srv, "GET / HTTP/1.0", host=None)
    assert status == 400 and "missing Host" in body["error"]
    assert exchange(srv, "GET / HTTP/1.1", host="a b")[0] == 400
    allowed = serve(allow_hosts=["search.lan"])
    assert exchange(allowed, "GET / HTTP/1.1", host="search.lan:8000")[0] == 200
    assert exchange(allowed, "GET / HTTP/1.1", host="evil.example")[0] == 421


def test_host_check_rules():
    assert [host_name(v) for v in ("a.b:80", "[::1]:9", "::1", "x:", "a b", "[zz]:1", "h:99999x")] == [
        "a.b", "::1", "::1", None, None, None, None]  # fmt: skip
    everywhere = HostCheck("0.0.0.0")
    assert everywhere.problem(["192.168.1.7:8000"]) is None and everywhere.problem(["[fe80::1]:80"]) is None
    assert everywhere.problem(["evil.example:8000"])[0] == 421
    bound = HostCheck("192.168.1.7", ["search.lan"])
    assert bound.problem(["192.168.1.7"]) is None and bound.problem(["search.lan"]) is None
    assert bound.problem(["10.0.0.1"])[0] == 421
    assert HostCheck("127.0.0.1", ["*"]).problem(["anything.example"]) is None


# ------------------------------------------------------------------------------------------ uploads, errors
def test_multipart_form_upload_is_answered_with_results(serve, images, index):
    srv = serve()
    data = png(images, "digit_5/2.png")
    form, content_type = multipart({"k": "4"}, data)
    status, _, body = post(srv, form, path="/search", content_type=content_type)
    assert status == 200 and len(body["results"]) == 4
    assert body["results"][0]["id"].endswith("digit_5/2.png") and body["results"][0]["distance"] < 1e-3
    form, content_type = multipart({"k": "4"}, None)
    status, _, body = post(srv, form, content_type=content_type)
    assert status == 400 and "no file" in body["error"]
    status, _, body = post(srv, b"--x\r\n\r\n", content_type="multipart/form-data")
    assert status == 400 and "multipart" in body["error"]


def test_common_formats_are_accepted_and_others_never_decoded(serve, images):
    srv = serve()
    with Image.open(images / "digit_7" / "4.png") as img:
        for fmt in ("JPEG", "GIF", "BMP", "WEBP", "TIFF"):
            buf = io.BytesIO()
            img.convert("RGB").save(buf, fmt)
            status, _, body = post(srv, buf.getvalue())
            assert status == 200 and body["results"][0]["label"] == "digit_7", fmt
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n"  # Pillow would hand EPS to Ghostscript
    status, _, body = post(srv, eps)
    assert status == 400 and "not recognised" in body["error"] and "PNG, JPEG" in body["error"]


def test_every_error_is_a_short_json_message(serve, images):
    srv = serve()
    truncated = png(images)[:120]
    cases = [
        ("PUT /search HTTP/1.1\r\nContent-Length: 0", b"", 501, "this server answers"),
        ("NONSENSE", b"", 400, "well-formed"),
        ("GET /nowhere HTTP/1.1", b"", 404, "the page is at /"),
        ("GET /search?id=100000 HTTP/1.1", b"", 404, "unknown image id"),
        ("POST /upload HTTP/1.1\r\nContent-Length: 3", b"abc", 404, "POST /search"),
        ("POST /search HTTP/1.1\r\nContent-Length: 0", b"", 400, "empty upload"),
        ("POST /search HTTP/1.1\r\nContent-Length: 12", b"hello, world", 400, "not an image"),
        (f"POST /search HTTP/1.1\r\nContent-Length: {len(truncated)}", truncated, 400, "not an image"),
    ]
    for head, body, status, words in cases:
        got, headers, answer, _ = exchange(srv, head, body, host=None if head == "NONSENSE" else "default")
        assert got == status and words in answer["error"] and len(answer["error"]) < 300, (head, answer)
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert post(srv, png(images))[0] == 200


# ------------------------------------------------------------------------------------------ the page
def chromium_path():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium_path() is None, reason="Debian chromium not installed (make test installs it)")
def test_markup_in_file_names_is_shown_as_text_in_chromium(serve, index):
    playwright = pytest.importorskip("playwright.sync_api")
    srv = serve()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    xss_file = next(p for p in (index.parent / "catalogue" / XSS_LABEL).iterdir())
    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]  # fmt: skip
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=flags)
        page = browser.new_page()
        incidents = []
        page.on("dialog", lambda d: (incidents.append(d.message), d.dismiss()))
        page.on("pageerror", lambda e: incidents.append(str(e)))
        response = page.goto(url + "/")
        assert "script-src 'nonce-" in response.headers["content-security-policy"]
        page.set_input_files("#file", str(xss_file))  # the page posts a multipart form
        page.fill("#k", "3")
        page.click("#search")
        page.wait_for_selector(".hit", timeout=30_000)
        first = page.locator(".hit").first
        assert first.locator(".name").inner_text() == XSS_NAME
        assert first.locator(".label").inner_text() == XSS_LABEL
        assert page.locator(".hit").count() == 3
        assert page.evaluate("window.pwned") is None and incidents == []
        assert page.locator("img[src='x'], svg").count() == 0  # no element made from the names
        browser.close()
