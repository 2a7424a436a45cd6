"""Stage 2, decoding: any image a user has becomes (size, size, 3) uint8, or a DecodeError."""

from __future__ import annotations

import io
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo, photo_array
from copyscan.decode import DecodeError, Decoded, decode_file, load_thumbnail, open_image

SIZE = 64
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _check(dec: Decoded, size: int = SIZE) -> np.ndarray:
    assert isinstance(dec, Decoded)
    assert dec.pixels.shape == (size, size, 3)
    assert dec.pixels.dtype == np.uint8
    assert len(dec.content_hash) == 32 and len(dec.pixel_hash) == 32
    return dec.pixels.astype(np.int16)


def _two_halves(path, orientation: int | None):
    """40 x 20 JPEG, left half red and right half blue, optionally with an EXIF orientation."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    Image.fromarray(arr).save(path, "JPEG", quality=95, **kw)
    return path


def _near(pixel, colour, tol=40) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, np.int16) - np.asarray(colour, np.int16)) <= tol))


# --- orientation and draft mode ---------------------------------------------------------


def test_exif_orientation_6_is_applied(tmp_path):
    plain = _check(decode_file(str(_two_halves(tmp_path / "plain.jpg", None)), 32), 32)
    assert _near(plain[16, 4], RED) and _near(plain[16, 28], BLUE)  # control: left red, right blue

    dec = decode_file(str(_two_halves(tmp_path / "rot.jpg", 6)), 32)
    px = _check(dec, 32)
    # Orientation 6: the stored picture is shown turned 90 degrees clockwise (left half on top).
    assert (dec.width, dec.height) == (20, 40)
    assert _near(px[4, 16], RED) and _near(px[28, 16], BLUE)
    assert _near(px[4, 4], RED) and _near(px[4, 28], RED)


@pytest.mark.parametrize("orientation,size", [(1, (40, 20)), (3, (40, 20)), (8, (20, 40))])
def test_other_orientations_report_display_size(tmp_path, orientation, size):
    dec = decode_file(str(_two_halves(tmp_path / "o.jpg", orientation)), 32)
    _check(dec, 32)
    assert (dec.width, dec.height) == size


def test_orientation_matches_pillow_exif_transpose(tmp_path):
    path = make_photo(tmp_path / "p.jpg", size=(120, 80), seed=5, exif=_exif(6))
    dec = decode_file(str(path), 48)
    with Image.open(path) as im:
        ref = np.asarray(im.transpose(Image.Transpose.ROTATE_270).convert("RGB").resize((48, 48), Image.Resampling.BILINEAR))
    assert (dec.width, dec.height) == (80, 120)
    assert np.abs(dec.pixels.astype(np.int16) - ref).mean() < 6


def test_png_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = RED
    arr[:, 20:] = BLUE
    path = tmp_path / "rot.png"
    Image.fromarray(arr).save(path, exif=_exif(6))
    dec = decode_file(str(path), 32)
    px = _check(dec, 32)
    assert (dec.width, dec.height) == (20, 40)
    assert _near(px[4, 16], RED, 2) and _near(px[28, 16], BLUE, 2)


def _exif(orientation: int, **tags) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    for k, v in tags.items():
        exif[int(k.lstrip("t"))] = v
    return exif.tobytes()


def test_jpeg_draft_mode_still_gives_requested_size(tmp_path):
    path = make_photo(tmp_path / "big.jpg", size=(800, 600), seed=2)
    data = path.read_bytes()
    img, w, h = open_image(data, SIZE)
    assert (w, h) == (800, 600)  # the original size, not the draft size
    assert SIZE <= min(img.size) and img.size[0] < 800  # decoded at a reduced DCT scale
    dec = decode_file(str(path), SIZE)
    px = _check(dec)
    assert (dec.width, dec.height) == (800, 600)
    ref = np.asarray(Image.fromarray(photo_array((800, 600), 2)).resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.int16)
    assert np.abs(px - ref).mean() < 12  # still the same picture
    # A request larger than the image decodes at full scale.
    img, _, _ = open_image(data, 1000)
    assert img.size == (800, 600)


def test_gray_decode_for_local_features(tmp_path):
    # Verification reads images in gray: a JPEG decoded straight to "L" (draft, EXIF orientation
    # applied as for colour), and a PNG with alpha flattened like colour then converted.
    path = make_photo(tmp_path / "big.jpg", size=(800, 600), seed=2)
    gray, w, h = open_image(path.read_bytes(), SIZE, gray=True)
    colour, _, _ = open_image(path.read_bytes(), SIZE)
    assert gray.mode == "L" and (w, h) == (800, 600) and gray.size == colour.size
    assert np.abs(np.asarray(gray, np.int16) - np.asarray(colour.convert("L"), np.int16)).mean() < 3
    turned, w, h = open_image(_two_halves(tmp_path / "rot.jpg", 6).read_bytes(), 16, gray=True)
    assert turned.mode == "L" and (w, h) == (20, 40) and turned.size[0] < turned.size[1]
    rgba = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    flat, _, _ = open_image((tmp_path / "clear.png").read_bytes(), 16, gray=True)
    assert flat.mode == "L" and int(np.asarray(flat).min()) == 255  # transparency onto white


# --- modes and formats -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name,mode",
    [
        ("cmyk.jpg", "CMYK"),
        ("grey.jpg", "L"),
        ("grey16.png", "I;16"),
        ("pal.png", "P"),
        ("rgba.png", "RGBA"),
        ("la.png", "LA"),
        ("grey.png", "L"),
        ("photo.tiff", "RGB"),
        ("cmyk.tif", "CMYK"),
        ("photo.webp", "RGB"),
        ("photo.bmp", "RGB"),
        ("photo.gif", "P"),
        ("rgba.webp", "RGBA"),
    ],
)
def test_modes_decode_to_rgb_uint8(tmp_path, name, mode):
    path = make_photo(tmp_path / name, size=(96, 72), seed=4, mode=mode)
    with Image.open(path) as im:
        assert im.mode == mode  # the file really holds that mode
    dec = decode_file(str(path), SIZE)
    px = _check(dec)
    assert (dec.width, dec.height) == (96, 72)
    assert px.std() > 10  # a picture, not a flat fill
    if mode in ("L", "I;16"):
        assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])


def test_cmyk_jpeg_colours_are_right(tmp_path):
    rgb = make_photo(tmp_path / "rgb.png", size=(96, 72), seed=6)
    cmyk = make_photo(tmp_path / "cmyk.jpg", size=(96, 72), seed=6, mode="CMYK", quality=95)
    a = _check(decode_file(str(rgb), SIZE))
    b = _check(decode_file(str(cmyk), SIZE))
    assert np.abs(a - b).mean() < 12  # not inverted, not channel-swapped


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(256, dtype=np.uint16) * 257)[None, :].repeat(8, axis=0)  # 0 .. 65535
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    img, w, h = open_image(path.read_bytes(), 0)
    arr = np.asarray(img)
    assert (w, h) == (256, 8) and arr.dtype == np.uint8
    assert np.array_equal(arr[0, :, 0], np.arange(256, dtype=np.uint8))


def test_palette_transparency_is_flattened_onto_white(tmp_path):
    idx = np.zeros((32, 32), np.uint8)
    idx[:, 16:] = 1
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 200, 30, 30] + [0] * (254 * 3))
    path = tmp_path / "pal_t.png"
    img.save(path, transparency=0)  # index 0 (black) is transparent
    with Image.open(path) as im:
        assert im.mode == "P" and "transparency" in im.info
    px = _check(decode_file(str(path), 32), 32)
    assert _near(px[16, 4], (255, 255, 255), 2)  # transparent -> white, not black
    assert _near(px[16, 28], (200, 30, 30), 2)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_flattened_onto_white(tmp_path, mode):
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[..., :3] = (10, 20, 30)
    arr[:, :16, 3] = 0  # left half fully transparent
    arr[:, 16:, 3] = 255
    img = Image.fromarray(arr, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    path = tmp_path / f"{mode}.png"
    img.save(path)
    px = _check(decode_file(str(path), 32), 32)
    assert _near(px[16, 4], (255, 255, 255), 2)
    assert px[16, 28].max() < 40


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (32, 32), c) for c in (RED, BLUE, (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as im:
        assert getattr(im, "n_frames", 1) == 3
    px = _check(decode_file(str(path), 16), 16)
    assert _near(px.reshape(-1, 3).mean(0), RED, 5)


def test_multipage_tiff_gives_first_page(tmp_path):
    pages = [Image.new("RGB", (24, 24), c) for c in (BLUE, RED)]
    path = tmp_path / "pages.tiff"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    px = _check(decode_file(str(path), 16), 16)
    assert _near(px.reshape(-1, 3).mean(0), BLUE, 5)


def test_tiny_and_extreme_aspect_images(tmp_path):
    for size in [(1, 1), (1, 300), (300, 1)]:
        path = make_photo(tmp_path / f"t{size[0]}x{size[1]}.png", size=size)
        dec = decode_file(str(path), SIZE)
        _check(dec)
        assert (dec.width, dec.height) == size


def test_load_thumbnail(tmp_path):
    path = make_photo(tmp_path / "t.jpg", size=(400, 200))
    thumb = load_thumbnail(str(path), 100)
    assert thumb.mode == "RGB" and max(thumb.size) == 100 and thumb.size == (100, 50)
    with pytest.raises(DecodeError):
        load_thumbnail(str(tmp_path / "missing.jpg"), 100)


# --- broken files -----------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty"):
        decode_file(str(path), SIZE)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DecodeError, match="cannot read"):
        decode_file(str(tmp_path / "nope.jpg"), SIZE)
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(DecodeError, match="folder"):
        decode_file(str(tmp_path / "dir.jpg"), SIZE)


@pytest.mark.parametrize("name", ["t.jpg", "t.png", "t.webp", "t.gif", "t.bmp", "t.tiff"])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1, 40, 12, 3])
def test_truncated_files_raise_decode_error(tmp_path, name, keep):
    good = make_photo(tmp_path / name, size=(160, 120), seed=7)
    data = good.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    cut = tmp_path / ("cut_" + name)
    cut.write_bytes(data[:n])
    try:
        decode_file(str(cut), SIZE)
    except DecodeError as exc:
        assert str(exc)  # a reason to show
    else:
        # Only formats whose decoder reads rows lazily and tolerates a short tail can get here;
        # JPEG and PNG must not.
        assert name.endswith((".bmp", ".tiff", ".gif", ".webp")), f"{name} cut to {n} bytes decoded without error"


@pytest.mark.parametrize("name", ["t.jpg", "t.png"])
def test_truncated_jpeg_and_png_are_decode_errors(tmp_path, name):
    good = make_photo(tmp_path / name, size=(160, 120), seed=8)
    data = good.read_bytes()
    # Cutting only the PNG trailer (IEND, last CRC) leaves every pixel there; cut into the data.
    for n in (len(data) - 40, len(data) // 2, 200, 30):
        cut = tmp_path / f"cut{n}_{name}"
        cut.write_bytes(data[:n])
        with pytest.raises(DecodeError):
            decode_file(str(cut), SIZE)


def test_corrupt_middle_of_png_is_decode_error(tmp_path):
    good = make_photo(tmp_path / "c.png", size=(160, 120), seed=9)
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(64)
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(DecodeError):
        decode_file(str(bad), SIZE)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not the pixels you are looking for\n" * 20)
    with pytest.raises(DecodeError, match="not an image"):
        decode_file(str(path), SIZE)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 1024)  # a few rows' worth: far short of what the header claims
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def test_decompression_bomb_png_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(60000, 60000))
    assert path.stat().st_size < 200
    with Image.open(path) as im:
        assert im.size == (60000, 60000)  # the header is valid: Pillow believes it
    t0 = time.perf_counter()
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_file(str(path), SIZE)
    assert time.perf_counter() - t0 < 1.0  # refused from the header, nothing decoded


def test_max_pixels_is_configurable(tmp_path):
    path = make_photo(tmp_path / "p.png", size=(100, 100))
    with pytest.raises(DecodeError, match="too many pixels"):
        decode_file(str(path), SIZE, max_pixels=9_999)
    _check(decode_file(str(path), SIZE, max_pixels=10_000))


# --- hashes -----------------------------------------------------------------------------


def test_content_hash_equal_for_identical_bytes(tmp_path):
    a = make_photo(tmp_path / "a.jpg", seed=1)
    b = tmp_path / "copy of a.jpg"
    shutil.copyfile(a, b)
    c = make_photo(tmp_path / "c.jpg", seed=2)
    da, db, dc = (decode_file(str(p), SIZE) for p in (a, b, c))
    assert da.content_hash == db.content_hash and da.pixel_hash == db.pixel_hash
    assert np.array_equal(da.pixels, db.pixels)
    assert dc.content_hash != da.content_hash and dc.pixel_hash != da.pixel_hash


def test_pixel_hash_same_for_png_and_bmp(tmp_path):
    png = make_photo(tmp_path / "x.png", seed=3)
    bmp = make_photo(tmp_path / "x.bmp", seed=3)
    dp, db = decode_file(str(png), SIZE), decode_file(str(bmp), SIZE)
    assert dp.content_hash != db.content_hash
    assert dp.pixel_hash == db.pixel_hash
    assert np.array_equal(dp.pixels, db.pixels)


def _jpeg_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment bytes) up to SOS; the rest (scan data + EOI) as marker 0."""
    assert data[:2] == b"\xff\xd8"
    out, i = [], 2
    while True:
        assert data[i] == 0xFF
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker == 0xDA:  # start of scan: everything after is entropy-coded data
            out.append((0, data[i:]))
            return out
        out.append((marker, data[i:i + 2 + length]))
        i += 2 + length


def test_pixel_hash_same_for_jpeg_with_and_without_exif(tmp_path):
    with_exif = make_photo(tmp_path / "e.jpg", size=(200, 150), seed=4, exif=_exif(1, t305="copyscan test", t271="Maker"))
    data = with_exif.read_bytes()
    segments = _jpeg_segments(data)
    assert any(m == 0xE1 for m, _ in segments)  # an APP1 (EXIF) segment is there
    stripped = b"\xff\xd8" + b"".join(seg for m, seg in segments if m != 0xE1)
    no_exif = tmp_path / "stripped.jpg"
    no_exif.write_bytes(stripped)

    a, b = decode_file(str(with_exif), SIZE), decode_file(str(no_exif), SIZE)
    assert a.content_hash != b.content_hash
    assert a.pixel_hash == b.pixel_hash
    assert np.array_equal(a.pixels, b.pixels)


def test_pixel_hash_same_for_jpeg_with_other_comment(tmp_path):
    a = make_photo(tmp_path / "a.jpg", seed=5, comment=b"first")
    b = make_photo(tmp_path / "b.jpg", seed=5, comment=b"second, longer")
    da, db = decode_file(str(a), SIZE), decode_file(str(b), SIZE)
    assert da.content_hash != db.content_hash
    assert da.pixel_hash == db.pixel_hash


def test_pixel_hash_differs_after_one_pixel_edit(tmp_path):
    arr = photo_array((120, 90), 6)
    a = tmp_path / "a.png"
    Image.fromarray(arr).save(a)
    edited = arr.copy()
    edited[45, 60, 1] ^= 1  # one channel of one pixel, by one level
    b = tmp_path / "b.png"
    Image.fromarray(edited).save(b)
    assert decode_file(str(a), SIZE).pixel_hash != decode_file(str(b), SIZE).pixel_hash


def test_pixel_hash_of_jpeg_depends_on_nothing_but_the_file(tmp_path):
    # The hash of a JPEG is taken at draft scale; the same file at the same size must agree.
    path = make_photo(tmp_path / "big.jpg", size=(900, 700), seed=7)
    assert decode_file(str(path), SIZE).pixel_hash == decode_file(str(path), SIZE).pixel_hash


def test_no_pillow_exception_escapes_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    heads = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 "]
    for i, head in enumerate(heads):
        for j in range(5):
            path = tmp_path / f"junk{i}_{j}.img"
            path.write_bytes(head + rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes())
            try:
                _check(decode_file(str(path), 16), 16)
            except DecodeError:
                pass


def test_image_from_memory_helpers_accept_bytes():
    buf = io.BytesIO()
    Image.fromarray(photo_array((50, 40), 1)).save(buf, "PNG")
    img, w, h = open_image(buf.getvalue(), 16)
    assert img.mode == "RGB" and (w, h) == (50, 40)
