"""``deepmetric serve INDEX_DIR``: a small local web page to search an index with an image.

Standard-library HTTP server (threaded) bound to localhost by default:

- ``GET /``: the page (upload a query image, or pick one of the indexed images, and see its nearest neighbours
  with their distances);
- ``POST /search?k=10``: body = the raw bytes of an image; answers JSON ``{"results": [{"id", "score",
  "distance", "label"?, "url"}]}``, or ``{"error": ...}`` with status 400 (not an image) or 413 (too large);
- ``GET /search?id=N&k=10``: search with the N-th indexed image;
- ``GET /image?id=N``: an indexed image (for thumbnails).

Bad uploads get a clear message and the server keeps running.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from PIL import Image, UnidentifiedImageError

from .index import EmbeddingIndex
from .model import EmbeddingModel

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deepmetric search</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
#results { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 1em; }
.hit { width: 120px; text-align: center; font-size: 12px; } .hit img { width: 112px; height: 112px;
  object-fit: contain; background: #eee; image-rendering: pixelated; }
#error { color: #b00; font-weight: bold; } #query img { max-width: 160px; max-height: 160px; }
</style></head><body>
<h1>deepmetric search</h1>
<p>Index: <b>__COUNT__</b> images, __KIND__ index, model <code>__MODEL__</code>.</p>
<form id="form"><input type="file" id="file" accept="image/*">
 k <input type="number" id="k" value="10" min="1" max="100" style="width:4em">
 <button type="submit" id="search">Search</button>
 <button type="button" id="random">Random indexed image</button></form>
<p id="error"></p><div id="query"></div><div id="results"></div>
<script>
const results = document.getElementById('results'), error = document.getElementById('error');
function show(data, status) {
  results.innerHTML = '';
  if (status !== 200) { error.textContent = data.error || ('error ' + status); return; }
  error.textContent = '';
  for (const hit of data.results) {
    const div = document.createElement('div'); div.className = 'hit';
    div.innerHTML = `<img src="${hit.url}" alt="${hit.id}"><br>${hit.label !== undefined ? hit.label + '<br>' : ''}` +
                    `d = ${hit.distance.toFixed(4)}`;
    results.appendChild(div);
  }
}
async function run(response) { show(await response.json(), response.status); }
document.getElementById('form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const file = document.getElementById('file').files[0];
  if (!file) { error.textContent = 'choose an image first'; return; }
  document.getElementById('query').innerHTML = '';
  await run(await fetch('/search?k=' + document.getElementById('k').value, {method: 'POST', body: file}));
});
document.getElementById('random').addEventListener('click', async () => {
  const id = Math.floor(Math.random() * __COUNT__);
  document.getElementById('query').innerHTML = `query: <img src="/image?id=${id}">`;
  await run(await fetch(`/search?id=${id}&k=` + document.getElementById('k').value));
});
</script></body></html>
"""


class SearchService:
    """The index and its model, shared by the request handlers (a lock serialises model calls)."""

    def __init__(self, index_dir: str | Path, max_upload_mb: float = 10.0, device: str | None = None):
        self.index = EmbeddingIndex.load(index_dir)
        model = self.index.model
        if not model.get("run_dir"):
            raise ValueError(f"{index_dir} records no model; build it with `deepmetric index build`")
        self.model = EmbeddingModel.load(model["run_dir"], model.get("checkpoint", "best"), device)
        self.index.check_model(self.model.source)
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.lock = threading.Lock()

    def search_image(self, image: Image.Image, k: int) -> list[dict]:
        with self.lock:
            emb = self.model.embed([image])
            hits = self.index.query(emb.numpy(), k)[0]
        position = {i: n for n, i in enumerate(self.index.ids)}
        for hit in hits:
            hit["url"] = f"/image?id={position[hit['id']]}"
        return hits

    def page(self) -> str:
        return (PAGE.replace("__COUNT__", str(len(self.index))).replace("__KIND__", self.index.kind)
                .replace("__MODEL__", str(self.index.model.get("run_dir", "?"))))  # fmt: skip


def make_handler(service: SearchService):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # quiet: one line per request on stderr is noise for a local tool
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _k(self, query) -> int:
            try:
                return max(1, min(100, int(query.get("k", ["10"])[0])))
            except ValueError:
                return 10

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path == "/":
                return self._send(200, service.page().encode(), "text/html; charset=utf-8")
            if url.path in ("/image", "/search"):
                try:
                    n = int(query["id"][0])
                    path = service.index.ids[n]
                except (KeyError, ValueError, IndexError):
                    return self._json(404, {"error": "unknown image id"})
                if url.path == "/image":
                    try:
                        return self._send(200, Path(path).read_bytes(), "image/" + (Path(path).suffix[1:] or "png"))
                    except OSError:
                        return self._json(404, {"error": f"indexed image no longer readable: {path}"})
                try:
                    with Image.open(path) as img:
                        img.load()
                        return self._json(200, {"results": service.search_image(img, self._k(query))})
                except (OSError, UnidentifiedImageError) as e:
                    return self._json(404, {"error": f"indexed image no longer readable: {path} ({e})"})
            return self._json(404, {"error": f"no such page: {url.path}"})

        def do_POST(self):
            url = urlparse(self.path)
            if url.path != "/search":
                return self._json(404, {"error": f"no such endpoint: {url.path}"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > service.max_upload:
                self.rfile.read(min(length, service.max_upload + 1))  # drain what the client is sending
                limit = service.max_upload / 1024 / 1024
                return self._json(413, {"error": f"image too large: {length / 1024 / 1024:.1f} MB > {limit:g} MB"})
            if length == 0:
                return self._json(400, {"error": "empty upload: send the bytes of an image"})
            data = self.rfile.read(length)
            try:
                img = Image.open(io.BytesIO(data))
                img.load()
            except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
                return self._json(400, {"error": "not an image (could not decode the upload)"})
            return self._json(200, {"results": service.search_image(img, self._k(parse_qs(url.query)))})

    return Handler


def make_server(index_dir, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0,
                device: str | None = None) -> ThreadingHTTPServer:  # fmt: skip
    """A ready server (``serve_forever()`` to run it); port 0 picks a free port (``server.server_address``)."""
    service = SearchService(index_dir, max_upload_mb, device)
    return ThreadingHTTPServer((host, port), make_handler(service))
