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
from core.reading import file_sha256, over_cap, read_file_bytes

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_TIMEOUT_S = 10.0
IMAGE_FILE = "image file"
# Up to this many pixels an image is decoded in full once and shared by every model (6 MB of
# RGB); a larger one is decoded per model at the scale that model needs (``reduction_factor``).
REDUCE_ABOVE_PIXELS = 2_000_000


@dataclass(frozen=True)
class ImageRef:
    """Where an image came from and the sha256 of its bytes (its identity everywhere).

    The decoded image is not held: ``core.images.open_image`` reads it when an agent needs it,
    or a ``LoadedImage`` reads it once for every agent of one run.
    """

    source: str
    sha256: str

    @classmethod
    def from_path(cls, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ImageRef:
        """The identity of a local image file of at most ``max_bytes``, hashed in chunks as it
        is read (``core.reading``: a regular file, checked before a byte is read)."""
        return cls(source=str(path), sha256=file_sha256(path, what=IMAGE_FILE, max_bytes=max_bytes))

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
    return read_file_bytes(ref.source, what=IMAGE_FILE, max_bytes=max_bytes)


def _over_byte_cap(size: int, max_bytes: int, source: str) -> InputError:
    return over_cap(size, max_bytes, what=IMAGE_FILE, path=source)


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


def reduction_factor(
    size: tuple[int, int], *, shortest_side: int | None = None, longest_side: int | None = None
) -> int:
    """The whole factor an image of ``size`` may shrink by for a model that needs at least
    ``shortest_side`` pixels on its shorter side (CLIP's input size) or ``longest_side`` on its
    longer one (what a VLM is sent); 1 when neither is given or the image is small enough to be
    decoded in full once and shared (``REDUCE_ABOVE_PIXELS``)."""
    width, height = size
    if width * height <= REDUCE_ABOVE_PIXELS:
        return 1
    factors = []
    if shortest_side is not None:
        factors.append(min(width, height) // max(shortest_side, 1))
    if longest_side is not None:
        factors.append(max(width, height) // max(longest_side, 1))
    return max(1, min(factors, default=1))


def _over_pixel_cap(width: int, height: int, max_pixels: int, source: str) -> InputError:
    return InputError(
        f"image is {width}x{height} = {width * height} pixels, over the cap of "
        f"{max_pixels} (possible decompression bomb)",
        path=source,
    )


def _decode(
    data: bytes, *, source: str, max_pixels: int, factor: Any = None
) -> tuple[Any, str, tuple[int, int]]:
    """The RGB image, the file's format name and its stored size (before EXIF rotation).

    ``factor``, called with the stored size, says by how much the image may shrink: a JPEG is
    then decoded at a reduced scale (``draft``) and the rest is a box-filter ``reduce``, so a
    36 MP photo for CLIP never exists at full size in memory."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise _over_pixel_cap(width, height, max_pixels, source)
            fmt = image.format or ""
            shrink = factor((width, height)) if factor is not None else 1
            if shrink > 1 and fmt == "JPEG":
                image.draft("RGB", (-(-width // shrink), -(-height // shrink)))
            image.load()
    except Image.DecompressionBombError as e:
        raise InputError(f"refused a decompression bomb ({e})", path=source) from None
    except UnidentifiedImageError:
        raise InputError("not an image file (unknown format)", path=source) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"truncated or corrupt image ({e})", path=source) from None
    image = ImageOps.exif_transpose(image) or image
    image = image if image.mode == "RGB" else image.convert("RGB")
    if shrink > 1:
        drafted = max(1, round(max(width, height) / max(image.size)))
        if shrink // drafted >= 2:
            image = image.reduce(shrink // drafted)
    return image, fmt, (width, height)


class LoadedImage:
    """One image of one run: its bytes read at most once and decoded at most once per scale,
    shared by every agent that looks at it (CLIP, a VLM, the retrieval embedder), then dropped
    with it. An image up to ``REDUCE_ABOVE_PIXELS`` has one scale, its full size; a larger one
    is decoded at the reduced scale each model asks for (``reduction_factor``).

    The readers of this module (``read_image_bytes``, ``open_image``, ``image_to_data_url``)
    accept it wherever they accept an ``ImageRef``, and check each caller's own caps against
    what was read. It is thread-safe: agents read it from worker threads at the same time.
    A read or decode that fails is not kept, so the next caller tries again.
    """

    def __init__(self, ref: ImageRef) -> None:
        self.ref = ref
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._size: tuple[int, int] | None = None
        self._decodes: dict[int, tuple[Any, str]] = {}

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

    @property
    def stored_size(self) -> tuple[int, int] | None:
        """Width and height as stored in the file (before EXIF rotation), once decoded."""
        return self._size

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
        self,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        shortest_side: int | None = None,
        longest_side: int | None = None,
    ) -> tuple[Any, str]:
        """The RGB ``PIL.Image`` (decoded on first use of its scale) and the file's format."""
        data = self.data(max_bytes=max_bytes)

        def factor(size: tuple[int, int]) -> int:
            return reduction_factor(size, shortest_side=shortest_side, longest_side=longest_side)

        with self._lock:
            key = factor(self._size) if self._size is not None else None
            if key is None or key not in self._decodes:
                image, fmt, self._size = _decode(
                    data, source=self.ref.source, max_pixels=max_pixels, factor=factor
                )
                key = factor(self._size)
                self._decodes[key] = (image, fmt)
            image, fmt = self._decodes[key]
            width, height = self._size
        if width * height > max_pixels:
            raise _over_pixel_cap(width, height, max_pixels, self.ref.source)
        return image, fmt


def open_image(
    ref: ImageRef | LoadedImage,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    shortest_side: int | None = None,
) -> Any:
    """Read and decode ``ref`` to an RGB ``PIL.Image`` under both caps. A model that needs only
    ``shortest_side`` pixels on the shorter side gets a large image shrunk by a whole factor
    while it is decoded (``reduction_factor``), never below that side."""
    if isinstance(ref, LoadedImage):
        return ref.decoded(max_bytes=max_bytes, max_pixels=max_pixels, shortest_side=shortest_side)[
            0
        ]
    data = read_image_bytes(ref, max_bytes=max_bytes, timeout_s=timeout_s)
    return _decode(
        data,
        source=ref.source,
        max_pixels=max_pixels,
        factor=lambda size: reduction_factor(size, shortest_side=shortest_side),
    )[0]


def image_to_data_url(
    ref: ImageRef | LoadedImage,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> str:
    """A base64 ``data:`` URL of a local image, validated by decoding it first.

    JPEG, PNG, WebP and GIF are sent as they are; other formats, and images larger than
    ``max_side`` on their longer side, are re-encoded as PNG (decoded at a reduced scale).
    """
    if isinstance(ref, LoadedImage):
        data = ref.data(max_bytes=max_bytes)
        image, fmt = ref.decoded(max_bytes=max_bytes, max_pixels=max_pixels, longest_side=max_side)
        stored = ref.stored_size or image.size
    else:
        data = read_image_bytes(ref, max_bytes=max_bytes)
        image, fmt, stored = _decode(
            data,
            source=ref.source,
            max_pixels=max_pixels,
            factor=lambda size: reduction_factor(size, longest_side=max_side),
        )
    too_large = max_side is not None and max(stored) > max_side
    mime = _DATA_URL_MIME.get(fmt)
    if mime is None or too_large:
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
    """An ``ImageRef`` for a path or an http(s) URL, hashed while its bytes are read once
    under ``max_bytes`` (a local file is checked to be a regular file first). With ``decodes``,
    bytes that do not decode to an image (``decode_image``) are an InputError."""
    if url_scheme(source) is None and not decodes:
        return ImageRef.from_path(source, max_bytes=max_bytes)
    data = read_image_bytes(
        ImageRef(source=source, sha256=""), max_bytes=max_bytes, timeout_s=timeout_s
    )
    if decodes:
        decode_image(data, source=source)
    return ImageRef.from_bytes(data, source=source)
