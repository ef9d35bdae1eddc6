"""Reading and writing images with Pillow: every failure is a StylizeError with one clear line.

Images travel as float tensors (3, H, W) in [0, 1] (or uint8), or as the same arrays in numpy for the
ONNX Runtime path, which never imports torch (onnx_runtime.py); an alpha channel is kept aside and put back.
Writes go to a temporary file in the destination folder and are renamed into place, so an
interrupted run never leaves a half-written image and an input is never overwritten.
"""
from __future__ import annotations

import struct
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stylize.errors import StylizeError
from stylize.files import atomic_write

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".avif", ".tif", ".tiff", ".gif",
                    ".ppm"}
SAVE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".bmp": "BMP",
                ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
# Photo formats that Pillow cannot read without a plug-in: a folder scan names them rather than
# passing over them in silence.
UNREADABLE_EXTENSIONS = {".heic", ".heif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"}
# What each output format can carry over from the photo (Pillow's save options).
_KEEPS = {"JPEG": ("icc_profile", "exif", "dpi"), "PNG": ("icc_profile", "exif", "dpi"),
          "WEBP": ("icc_profile", "exif"), "TIFF": ("icc_profile", "exif", "dpi"), "BMP": ("dpi",)}
HAS_ALPHA = {"PNG", "WEBP", "TIFF"}
# Pillow's default decompression-bomb guard warns above ~89 MP; camera and panorama photos go beyond
# it. stylize applies its own limit where it opens a file (_open), leaving Pillow's global setting and
# warning filters as the program that imports stylize has them.
MAX_PIXELS = 250_000_000
_OPENING = threading.Lock()
# Photos are converted to and from arrays a band of rows at a time, about this many pixels, so that a
# big photo is never held as a Pillow image and a whole array copy at once: at MAX_PIXELS a Pillow
# RGB image is 1 GB and the (3, H, W) uint8 array 750 MB (bench/memory.py; README "Big photos").
BAND_PIXELS = 1 << 22


def _open(path: Path) -> Image.Image:
    """Image.open (lazy: the header only) under stylize's pixel limit instead of Pillow's."""
    with _OPENING:  # Pillow's limit is a module global: lift it for this call only
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    if im.width * im.height > MAX_PIXELS:
        im.close()
        raise StylizeError(f"{path}: refused, over {MAX_PIXELS:,} pixels (decompression-bomb guard)")
    return im


_DEEP = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit, 32-bit and float greyscale


def _deep_scale(im: Image.Image) -> float:
    """What a deep greyscale image's values are divided by: 65535 for 16-bit (and 32-bit ones that
    go past 255), 255 for 32-bit ones within 8-bit levels, 1 for float. Taken from the whole image,
    so that every band of it is scaled alike."""
    if im.mode == "F":
        return 1.0
    return 65535.0 if im.mode.startswith("I;16") or im.getextrema()[1] > 255 else 255.0


def _to_float_rgb(im: Image.Image, scale: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow mode -> (H, W, 3) float32 RGB in [0, 1] and (H, W) alpha or None; `scale`: a
    deep greyscale image's (_deep_scale of the whole image, when `im` is a band of it)."""
    alpha = None
    if im.mode in _DEEP:
        a = np.asarray(im, dtype=np.float32)
        a = np.clip(a / (scale or _deep_scale(im)), 0, 1)
        return np.repeat(a[:, :, None], 3, axis=2), None
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, alpha


def open_image(path: str | Path) -> Image.Image:
    """Open, fully decode and orient an image, or raise a StylizeError that says what is wrong."""
    path = Path(path)
    if not path.exists():
        raise StylizeError(f"{path}: no such file")
    if path.is_dir():
        raise StylizeError(f"{path}: is a folder, not an image")
    try:
        im = _open(path)
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # not a copy: 1 GB at MAX_PIXELS
        return im
    except Image.DecompressionBombError as e:  # a frame or page past Pillow's own limit while decoding
        raise StylizeError(f"{path}: refused by Pillow's decompression-bomb guard ({e})")
    except UnidentifiedImageError:
        raise StylizeError(f"{path}: not an image Pillow can read")
    except (OSError, SyntaxError, ValueError) as e:
        raise StylizeError(f"{path}: corrupt or truncated image ({e})")


def metadata(path: str | Path) -> dict:
    """What an output keeps of its photo: the ICC colour profile (so colour-managed viewers show the
    same colours), EXIF without the orientation (open_image has applied it) and the DPI."""
    try:
        with _open(path) as im:
            meta = {k: im.info[k] for k in ("icc_profile", "dpi") if im.info.get(k)}
            if im.format == "PNG" and "exif" not in im.info:  # Pillow's getexif would decode every pixel
                exif = Image.Exif()  # to look for an eXIf chunk after them: a second 1 GB at MAX_PIXELS
                if (data := _png_chunk(path, b"eXIf")) is not None:
                    exif.load(b"Exif\x00\x00" + data)
            else:
                exif = im.getexif()
    except Exception:  # the pixels are read (and their errors reported) elsewhere
        return {}
    if exif:
        exif.pop(0x0112, None)  # orientation
        meta["exif"] = exif.tobytes()
    return meta


def _png_chunk(path: str | Path, kind: bytes) -> bytes | None:
    """The data of a PNG file's first chunk of this kind, found by skipping from chunk to chunk."""
    with open(path, "rb") as f:
        f.seek(8)  # the signature
        while len(head := f.read(8)) == 8:
            length, found = struct.unpack(">I4s", head)
            if found == kind:
                return f.read(length)
            if found == b"IEND":
                return None
            f.seek(length + 4, 1)  # the data and its CRC
    return None


def pixel_count(path: str | Path) -> int:
    """Width x height from the header alone, no pixels decoded; 0 when the header cannot be read."""
    try:
        with _open(path) as im:
            return im.width * im.height
    except Exception:
        return 0


def frame_count(path: str | Path) -> int:
    """Frames of an animated image (GIF, APNG, WebP, TIFF pages); 1 for a still one or on any error."""
    try:
        with _open(path) as im:
            return getattr(im, "n_frames", 1)
    except Exception:
        return 1


def _to_uint8_rgb(im: Image.Image, scale: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow mode -> (H, W, 3) uint8 RGB and (H, W) uint8 alpha or None, without a float copy."""
    if im.mode in _DEEP:
        rgb, _ = _to_float_rgb(im, scale)
        return (rgb * 255).round().astype(np.uint8), None
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    alpha = np.asarray(im.getchannel("A")) if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") else None
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), alpha


def _rows(height: int, width: int):
    """(top, bottom) bands of rows of about BAND_PIXELS each."""
    step = max(1, BAND_PIXELS // max(1, width))
    for top in range(0, height, step):
        yield top, min(height, top + step)


def read_array(path: str | Path, max_size: int | None = None,
               uint8: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (3, H, W) array and (1, H, W) alpha or None, longest side <= max_size: float32 in [0, 1], or
    with uint8=True 0-255 (a quarter of the memory, for big photos). No torch. Converted a band of
    rows at a time: the peak is the decoded image and the array, not two copies besides."""
    im = open_image(path)
    if max_size and max(im.size) > max_size:
        s = max_size / max(im.size)
        size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0) if im.mode not in ("I;16", "F") else im.resize(size)
    convert, scale = (_to_uint8_rgb if uint8 else _to_float_rgb), _deep_scale(im) if im.mode in _DEEP else None
    x = np.empty((3, im.height, im.width), np.uint8 if uint8 else np.float32)
    alpha = None
    for top, bottom in _rows(im.height, im.width):
        rgb, a = convert(im.crop((0, top, im.width, bottom)), scale)
        x[:, top:bottom] = rgb.transpose(2, 0, 1)
        if a is not None:
            if alpha is None:
                alpha = np.empty((1, im.height, im.width), a.dtype)
            alpha[0, top:bottom] = a
    return x, alpha


def load_image(path: str | Path, max_size: int | None = None, dtype=None):
    """read_array as torch tensors: float32 in [0, 1], or uint8 with dtype=torch.uint8."""
    import torch

    x, alpha = read_array(path, max_size, uint8=dtype == torch.uint8)
    return torch.from_numpy(x), (torch.from_numpy(alpha) if alpha is not None else None)


def _as_uint8(x) -> np.ndarray:
    """Float in [0, 1] (clamped) or uint8, a torch tensor or a numpy array -> uint8 numpy array."""
    if hasattr(x, "detach"):  # a torch tensor, so torch is already imported
        import torch

        x = x.detach().cpu()
        if x.dtype != torch.uint8:
            x = (x.float().clamp(0, 1) * 255).round_().to(torch.uint8)
        return x.numpy()
    x = np.asarray(x)
    return x if x.dtype == np.uint8 else np.round(np.clip(x.astype(np.float32), 0, 1) * 255).astype(np.uint8)


def to_pil(x, alpha=None) -> Image.Image:
    """(3, H, W) float in [0, 1] or uint8 (and (1, H, W) alpha, either kind; torch or numpy) -> Pillow.
    Filled a band of rows at a time: the image and the array, no whole-size copy between them."""
    h, w = x.shape[1:]
    im = Image.new("RGB" if alpha is None else "RGBA", (w, h))
    for top, bottom in _rows(h, w):
        band = _as_uint8(x[:, top:bottom])
        if alpha is not None:
            band = np.concatenate([band, _as_uint8(alpha[:, top:bottom])])
        im.paste(Image.fromarray(np.ascontiguousarray(band.transpose(1, 2, 0))), (0, top))
    return im


def check_output_format(path: Path) -> str:
    """The format an output path's suffix names, or a StylizeError."""
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise StylizeError(f"{path}: unknown output format {path.suffix or '(no suffix)'}; use one of "
                           f"{', '.join(sorted(SAVE_FORMATS))}")
    return fmt


def save_pil(im: Image.Image, path: str | Path, quality: int = 95, meta: dict | None = None) -> Path:
    """Write atomically: a temporary file in the same folder, then a rename. `meta` (metadata()) is
    kept as far as the format can hold it."""
    path = Path(path)
    fmt = check_output_format(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StylizeError(f"{folder}: cannot create output folder ({e.strerror})")
    if im.mode == "RGBA" and fmt not in HAS_ALPHA:
        im = im.convert("RGB")  # these formats have no alpha
    # PNG at zlib level 3: 12 ms less than Pillow's 6 for a 1024x768 stylization, 2% larger
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {"compress_level": 3} if fmt == "PNG" else {}
    options.update({k: v for k, v in (meta or {}).items() if k in _KEEPS[fmt]})
    try:
        return atomic_write(path, lambda f: im.save(f, format=fmt, **options), f".{path.stem}.", path.suffix + ".part")
    except OSError as e:
        raise StylizeError(f"{path}: cannot write ({e.strerror or e})")


def save_image(x, path: str | Path, alpha=None, quality: int = 95, meta: dict | None = None) -> Path:
    return save_pil(to_pil(x, alpha), path, quality, meta)


def find_images(folder: str | Path) -> list[Path]:
    """Every image file below a folder (recursive), in a stable order."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


MIN_STYLE_SIDE = 16  # a painting smaller than this has no statistics worth matching


def check_style(path, shape: tuple[int, ...]) -> None:
    """A style image of (.., H, W) must be at least MIN_STYLE_SIDE on its shorter side."""
    h, w = shape[-2:]
    if min(h, w) < MIN_STYLE_SIDE:
        raise StylizeError(f"{path}: style image too small ({w}x{h}); need at least {MIN_STYLE_SIDE} px")


def load_style(path, size: int | None):
    """A style image as a float tensor, its longest side at most `size`: (name, (3, H, W))."""
    x, _ = load_image(path, max_size=size)
    check_style(path, x.shape)
    return Path(path).stem, x


def style_files(paths: list[str | Path]) -> list[Path]:
    """Style images given as files or folders (a folder means every image in it)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise StylizeError(f"{p}: folder holds no images")
            out.extend(found)
        else:
            out.append(p)
    return out
