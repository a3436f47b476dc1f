"""Reading images safely: caps, decompression bombs, bad files, http(s)-only URLs."""

from __future__ import annotations

import base64
import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from core.errors import InputError
from core.images import (
    ImageRef,
    decode_image,
    fetch_url,
    image_ref,
    image_to_data_url,
    open_image,
    url_scheme,
)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file that declares ``width`` x ``height`` (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def ref(path: Path) -> ImageRef:
    return ImageRef.from_path(path)


def test_reads_and_converts_to_rgb(tmp_path: Path) -> None:
    path = tmp_path / "grey.png"
    Image.new("LA", (30, 20), (128, 255)).save(path)
    image = open_image(ref(path))
    assert image.mode == "RGB" and image.size == (30, 20)
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupt image") as info:
        open_image(ref(path))
    assert str(info.value).startswith(f"{path}: ")


def test_non_image_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels")
    with pytest.raises(InputError, match=r"notes\.png: not an image file"):
        open_image(ref(path))


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    # over twice PIL's own limit: PIL refuses it while reading the header
    huge = png_header_only(tmp_path / "bomb.png", 30_000, 30_000)
    assert huge.stat().st_size < 200
    with pytest.raises(InputError, match="decompression bomb"):
        open_image(ref(huge))
    # under PIL's limit but over ours: our pixel cap refuses it
    big = png_header_only(tmp_path / "big.png", 10_000, 5_000)
    with pytest.raises(InputError, match=r"10000x5000 = 50000000 pixels, over the cap of 40000000"):
        open_image(ref(big))
    with pytest.raises(InputError, match="over the cap of 100"):
        decode_image(big.read_bytes(), source="x", max_pixels=100)


def test_byte_cap_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "leaf.png"
    Image.effect_noise((64, 64), 80).convert("RGB").save(path)
    size = path.stat().st_size
    with pytest.raises(InputError, match=f"is {size} bytes, over the cap of 1000 bytes"):
        open_image(ref(path), max_bytes=1000)
    gone = ImageRef(source=str(tmp_path / "gone.png"), sha256="0" * 64)
    with pytest.raises(InputError, match="no such image file"):
        open_image(gone)


@pytest.mark.parametrize("source", ["ftp://host/leaf.png", "file:///etc/passwd", "gs://b/x.jpg"])
def test_only_http_urls(source: str) -> None:
    with pytest.raises(InputError, match="unsupported URL scheme") as info:
        open_image(ImageRef(source=source, sha256="0" * 64))
    assert source in str(info.value)
    with pytest.raises(InputError, match="only http and https"):
        fetch_url(source)


def test_url_scheme() -> None:
    assert url_scheme("HTTPS://x/y") == "https"
    assert url_scheme("/data/leaf.png") is None
    assert url_scheme("C:\\leaf.png") is None


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving an image, a 404 and a slow reply."""
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), (0, 90, 0)).save(buffer, format="PNG")
    png = buffer.getvalue()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/slow.png":
                time.sleep(1.5)
            if self.path not in ("/leaf.png", "/slow.png"):
                self.send_error(404)
                return
            try:
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.end_headers()
                self.wfile.write(png * (200 if self.path == "/slow.png" else 1))
            except (BrokenPipeError, ConnectionResetError):
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_url_fetch_with_caps(image_server: str) -> None:
    url = f"{image_server}/leaf.png"
    image = open_image(ImageRef(source=url, sha256="0" * 64))
    assert image.size == (12, 8) and image.getpixel((0, 0)) == (0, 90, 0)
    with pytest.raises(InputError, match="over the cap of 10 bytes"):
        fetch_url(url, max_bytes=10)
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_url(f"{image_server}/missing.png")
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"timed out after 0\.3 s"):
        fetch_url(f"{image_server}/slow.png", timeout_s=0.3)
    assert time.perf_counter() - start < 1.4


def test_image_ref_decodes_on_request(image_server: str, tmp_path: Path) -> None:
    leaf, notes = tmp_path / "leaf.png", tmp_path / "notes.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(leaf)
    notes.write_text("not an image")
    assert image_ref(str(leaf), decodes=True) == ImageRef.from_path(leaf)
    assert image_ref(str(notes)).sha256 == ImageRef.from_path(notes).sha256
    with pytest.raises(InputError, match=r"notes\.png: not an image file"):
        image_ref(str(notes), decodes=True)
    url = f"{image_server}/leaf.png"
    assert image_ref(url, decodes=True).sha256 == image_ref(url).sha256


def test_data_urls(tmp_path: Path) -> None:
    png = tmp_path / "leaf.png"
    Image.new("RGB", (40, 20), (1, 2, 3)).save(png)
    url = image_to_data_url(ref(png))
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == png.read_bytes()

    bmp = tmp_path / "leaf.bmp"
    Image.new("RGB", (40, 20), (1, 2, 3)).save(bmp)
    url = image_to_data_url(ref(bmp))
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert url.startswith("data:image/png;base64,") and decoded.format == "PNG"

    small = image_to_data_url(ref(png), max_side=10)
    decoded = Image.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1])))
    assert decoded.size == (10, 5)

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    with pytest.raises(InputError, match=r"bad\.png"):
        image_to_data_url(ref(bad))
