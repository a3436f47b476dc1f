"""Images: ``ImageRef`` (where an image came from, its sha256 identity), ``LabelledImage`` and
``SkippedImage`` (what a scan of inputs gives, ``core.image_inputs``), and reading images safely:
a byte cap, a pixel cap (decompression bombs), http(s)-only URLs.

Every failure is an ``InputError`` that names the file or URL; nothing here returns a
half-decoded image.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InputError


@dataclass(frozen=True)
class ImageRef:
    """Where an image came from and the sha256 of its bytes (its identity everywhere).

    The decoded image is not held: ``core.images.open_image`` reads it when an agent needs it,
    or a ``LoadedImage`` reads it once for every agent of one run.
    """

    source: str
    sha256: str

    @classmethod
    def from_path(cls, path: str | Path) -> ImageRef:
        p = Path(path)
        try:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise InputError("no such image file", path=str(p)) from None
        except IsADirectoryError:
            raise InputError("is a folder, not an image file", path=str(p)) from None
        return cls(source=str(p), sha256=digest)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> ImageRef:
        return cls(source=source, sha256=hashlib.sha256(data).hexdigest())

    @property
    def name(self) -> str:
        return self.source.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class LabelledImage:
    """An image with its true label when known (ImageFolder layouts, manifests) and, when a
    manifest named it, that manifest's line (the header is line 1)."""

    image: ImageRef
    truth: str | None = None
    line: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedImage:
    """An image left out of a run or an index build (unreadable, a duplicate, failed), and why."""

    source: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_TIMEOUT_S = 10.0

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_DATA_URL_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}


def url_scheme(source: str) -> str | None:
    """The scheme of ``source`` when it looks like a URL (``ftp``, ``https``), else None."""
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else None


def read_image_bytes(
    ref: ImageRef | LoadedImage,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bytes:
    """The raw bytes of a local file or an http(s) URL, at most ``max_bytes``."""
    if isinstance(ref, LoadedImage):
        return ref.data(max_bytes=max_bytes, timeout_s=timeout_s)
    scheme = url_scheme(ref.source)
    if scheme is not None:
        if scheme not in ("http", "https"):
            raise InputError(
                f"unsupported URL scheme '{scheme}' (only http and https)", path=ref.source
            )
        return fetch_url(ref.source, max_bytes=max_bytes, timeout_s=timeout_s)
    path = Path(ref.source)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError("no such image file", path=ref.source) from None
    if path.is_dir():
        raise InputError("is a folder, not an image file", path=ref.source)
    if size > max_bytes:
        raise _over_byte_cap(size, max_bytes, ref.source)
    return path.read_bytes()


def _over_byte_cap(size: int, max_bytes: int, source: str) -> InputError:
    return InputError(f"image file is {size} bytes, over the cap of {max_bytes} bytes", path=source)


def fetch_url(url: str, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = 10.0) -> bytes:
    """GET an http(s) URL with a timeout, stopping as soon as the body passes ``max_bytes``."""
    import httpx

    if url_scheme(url) not in ("http", "https"):
        raise InputError("only http and https URLs can be fetched", path=url)
    chunks: list[bytes] = []
    total = 0
    try:
        with (
            httpx.Client(timeout=timeout_s, follow_redirects=True, max_redirects=5) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code >= 400:
                raise InputError(f"HTTP {response.status_code} fetching the image", path=url)
            if url_scheme(str(response.url)) not in ("http", "https"):
                raise InputError("redirected to a non-http(s) URL", path=url)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise InputError(
                    f"image is {declared} bytes, over the cap of {max_bytes} bytes", path=url
                )
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise InputError(
                        f"image is over the cap of {max_bytes} bytes (download stopped)", path=url
                    )
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise InputError(f"timed out after {timeout_s:g} s fetching the image", path=url) from None
    except httpx.HTTPError as e:
        raise InputError(f"could not fetch the image ({type(e).__name__})", path=url) from None
    return b"".join(chunks)


def decode_image(data: bytes, *, source: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Any:
    """Decode bytes to an RGB ``PIL.Image``; the pixel count is checked before decoding."""
    return _decode(data, source=source, max_pixels=max_pixels)[0]


def _over_pixel_cap(width: int, height: int, max_pixels: int, source: str) -> InputError:
    return InputError(
        f"image is {width}x{height} = {width * height} pixels, over the cap of "
        f"{max_pixels} (possible decompression bomb)",
        path=source,
    )


def _decode(data: bytes, *, source: str, max_pixels: int) -> tuple[Any, str, tuple[int, int]]:
    """The RGB image, the file's format name and its stored size (before EXIF rotation)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise _over_pixel_cap(width, height, max_pixels, source)
            fmt = image.format or ""
            image.load()
    except Image.DecompressionBombError as e:
        raise InputError(f"refused a decompression bomb ({e})", path=source) from None
    except UnidentifiedImageError:
        raise InputError("not an image file (unknown format)", path=source) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"truncated or corrupt image ({e})", path=source) from None
    image = ImageOps.exif_transpose(image) or image
    return (image if image.mode == "RGB" else image.convert("RGB")), fmt, (width, height)


class LoadedImage:
    """One image of one run: its bytes read at most once and decoded at most once, shared by
    every agent that looks at it (CLIP, a VLM, the retrieval embedder), then dropped with it.

    The readers of this module (``read_image_bytes``, ``open_image``, ``image_to_data_url``)
    accept it wherever they accept an ``ImageRef``, and check each caller's own caps against
    what was read. It is thread-safe: agents read it from worker threads at the same time.
    A read or decode that fails is not kept, so the next caller tries again.
    """

    def __init__(self, ref: ImageRef) -> None:
        self.ref = ref
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._decoded: tuple[Any, str, tuple[int, int]] | None = None

    def __repr__(self) -> str:
        return f"LoadedImage({self.ref.source!r}, read={self._data is not None})"

    @property
    def source(self) -> str:
        return self.ref.source

    @property
    def sha256(self) -> str:
        return self.ref.sha256

    @property
    def name(self) -> str:
        return self.ref.name

    def data(
        self, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> bytes:
        """The image's bytes (read on first use), InputError when over ``max_bytes``."""
        with self._lock:
            if self._data is None:
                self._data = read_image_bytes(self.ref, max_bytes=max_bytes, timeout_s=timeout_s)
            data = self._data
        if len(data) > max_bytes:
            raise _over_byte_cap(len(data), max_bytes, self.ref.source)
        return data

    def decoded(
        self, *, max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> tuple[Any, str]:
        """The RGB ``PIL.Image`` (decoded on first use) and the file's format name."""
        data = self.data(max_bytes=max_bytes)
        with self._lock:
            if self._decoded is None:
                self._decoded = _decode(data, source=self.ref.source, max_pixels=max_pixels)
            image, fmt, (width, height) = self._decoded
        if width * height > max_pixels:
            raise _over_pixel_cap(width, height, max_pixels, self.ref.source)
        return image, fmt


def open_image(
    ref: ImageRef | LoadedImage,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> Any:
    """Read and decode ``ref`` to an RGB ``PIL.Image`` under both caps."""
    if isinstance(ref, LoadedImage):
        return ref.decoded(max_bytes=max_bytes, max_pixels=max_pixels)[0]
    data = read_image_bytes(ref, max_bytes=max_bytes, timeout_s=timeout_s)
    return decode_image(data, source=ref.source, max_pixels=max_pixels)


def image_to_data_url(
    ref: ImageRef | LoadedImage,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> str:
    """A base64 ``data:`` URL of a local image, validated by decoding it first.

    JPEG, PNG, WebP and GIF are sent as they are; other formats, and images larger than
    ``max_side`` on their longer side, are re-encoded as PNG.
    """
    if isinstance(ref, LoadedImage):
        data = ref.data(max_bytes=max_bytes)
        image, fmt = ref.decoded(max_bytes=max_bytes, max_pixels=max_pixels)
    else:
        data = read_image_bytes(ref, max_bytes=max_bytes)
        image, fmt, _ = _decode(data, source=ref.source, max_pixels=max_pixels)
    mime = _DATA_URL_MIME.get(fmt)
    if mime is None or (max_side is not None and max(image.size) > max_side):
        if max_side is not None and max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, mime = buffer.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_ref(
    source: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    decodes: bool = False,
) -> ImageRef:
    """An ``ImageRef`` for a path or an http(s) URL (read once to hash its bytes). With
    ``decodes``, bytes that do not decode to an image (``decode_image``) are an InputError."""
    probe = ImageRef(source=source, sha256="")
    if url_scheme(source) is None and not decodes:
        return ImageRef.from_path(source)
    data = read_image_bytes(probe, max_bytes=max_bytes, timeout_s=timeout_s)
    if decodes:
        decode_image(data, source=source)
    return ImageRef.from_bytes(data, source=source)
