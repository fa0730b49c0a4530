"""Profile photos: check, re-encode and resize uploads with Pillow, off the event loop."""

from __future__ import annotations

import asyncio
import io

from PIL import Image, ImageOps, UnidentifiedImageError

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
# Refuse before decoding anything larger: a tiny file can claim a huge canvas.
MAX_PIXELS = 40_000_000
PHOTO_SIZE = 512
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")


class ImageRejected(ValueError):
    """The upload is not an image we accept; the message says why, for the user."""


def process_photo(data: bytes) -> bytes:
    """A square WebP of at most PHOTO_SIZE pixels, re-encoded from scratch (no metadata kept).

    Blocking: call `process_photo_async` from the event loop.
    """
    if not data:
        raise ImageRejected("The file is empty. Choose a JPEG, PNG or WebP photo.")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageRejected("The photo is larger than 5 MB. Choose a smaller one.")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as opened:
            width, height = opened.size
            if width < 1 or height < 1 or width * height > MAX_PIXELS:
                raise ImageRejected(
                    "The picture's dimensions are too large. Use a photo under 40 megapixels."
                )
            opened.seek(0)  # animated files: the first frame only
            opened.load()
            img: Image.Image = ImageOps.exif_transpose(opened)
            img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P", "PA") else "RGB")
            img = ImageOps.fit(img, (min(PHOTO_SIZE, min(img.size)),) * 2, Image.Resampling.LANCZOS)
            out = io.BytesIO()
            # A new image from pixels only: EXIF, GPS, ICC and comments are not carried over.
            clean = Image.new(img.mode, img.size)
            clean.paste(img)
            clean.save(out, format="WEBP", quality=85, method=4)
            return out.getvalue()
    except ImageRejected:
        raise
    except Image.DecompressionBombError:
        raise ImageRejected(
            "The picture's dimensions are too large. Use a photo under 40 megapixels."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageRejected(
            "That file is not a JPEG, PNG or WebP image we can read. Choose another photo."
        ) from None


async def process_photo_async(data: bytes) -> bytes:
    """`process_photo` in a worker thread, so the server keeps serving meanwhile."""
    return await asyncio.to_thread(process_photo, data)
