"""imageio: every PIL mode becomes RGB, EXIF orientation is applied, bad files raise DataError naming the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssd_core.errors import DataError
from ssd_core.imageio import BACKGROUND, exif_orientation, load_rgb, open_image, to_rgb


def rgb(img) -> np.ndarray:
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out)


def test_greyscale_and_bilevel_become_rgb_with_equal_channels():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = rgb(Image.fromarray(a, "L"))
    assert (out == a[..., None]).all()
    assert (rgb(Image.new("1", (4, 3), 1)) == 255).all()


def test_alpha_is_composited_on_the_neutral_background():
    la = Image.fromarray(np.array([[[200, 0], [200, 255]]], np.uint8), "LA")
    assert rgb(la).tolist() == [[list(BACKGROUND), [200, 200, 200]]]
    rgba = Image.new("RGBA", (1, 1), (255, 0, 0, 128))      # half-transparent red
    expected = np.round(np.array([255, 0, 0]) * 128 / 255 + np.array(BACKGROUND) * 127 / 255)
    assert np.abs(rgb(rgba)[0, 0] - expected).max() <= 1


def test_palette_with_and_without_transparency():
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putdata([0, 1])
    assert rgb(p).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    p.info["transparency"] = 0                               # index 0 is transparent
    assert rgb(p).tolist() == [[list(BACKGROUND), [200, 100, 50]]]


def test_cmyk_becomes_rgb():
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0)])             # white, cyan
    assert rgb(cmyk).tolist() == [[[255, 255, 255], [0, 255, 255]]]


def test_16_bit_greyscale_is_scaled_to_8_bits(tmp_path):
    a = np.array([[0, 100 * 256, 65535]], np.uint16)
    img = Image.fromarray(a)
    assert img.mode.startswith("I;16")
    assert rgb(img)[0, :, 0].tolist() == [0, 100, 255]
    img.save(tmp_path / "deep.png")                          # PNG keeps 16 bits; Pillow opens it as I/I;16
    out = np.asarray(load_rgb(open_image(tmp_path / "deep.png")))
    assert out.shape == (1, 3, 3) and out[0, :, 0].tolist() == [0, 100, 255]
    assert rgb(Image.fromarray(np.array([[0.0, 0.5, 2.0]], np.float32), "F"))[0, :, 0].tolist() == [0, 63, 255]


def test_png_with_alpha_through_load_rgb(tmp_path):
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 255)                              # opaque; the rest fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == list(BACKGROUND)


def test_jpeg_exif_orientation_6_is_rotated_upright(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = 255                                          # white band on the left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6                                         # "rotate 90 clockwise to display"
    Image.fromarray(a).save(tmp_path / "o6.jpg", exif=exif, quality=95)
    img = open_image(tmp_path / "o6.jpg")
    assert img.size == (40, 20) and exif_orientation(img) == 6
    out = np.asarray(load_rgb(img))
    assert out.shape == (40, 20, 3)                          # width and height swapped
    assert out[:8].mean() > 240 and out[12:].mean() < 15     # the left band is now the top band


UPRIGHT = {  # what a viewer shows for each EXIF orientation, in numpy terms
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_the_spec(tmp_path, orientation):
    a = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(a).save(tmp_path / "o.png", exif=exif)  # lossless, so pixels compare exactly
    img = open_image(tmp_path / "o.png")
    assert exif_orientation(img) == orientation
    assert np.array_equal(np.asarray(load_rgb(img)), UPRIGHT[orientation](a))


def test_invalid_orientation_reads_as_upright():
    img = Image.new("RGB", (3, 2))
    img.getexif()[0x0112] = 9
    assert exif_orientation(img) == 1 and exif_orientation(Image.new("RGB", (3, 2))) == 1


def test_missing_empty_and_garbage_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.jpg.*not found"):
        open_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg.*empty"):
        open_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(DataError, match="junk.jpg"):
        open_image(tmp_path / "junk.jpg")


def test_truncated_jpeg_opens_lazily_then_fails_to_decode_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with open_image(tmp_path / "cut.jpg") as img:            # the header is intact: lazy open works
        assert img.size == (64, 64)
        with pytest.raises(DataError, match="cut.jpg.*decode"):
            load_rgb(img)
    with pytest.raises(DataError, match="cut.jpg.*decode"):
        load_rgb(tmp_path / "cut.jpg")                       # from a path: the file is closed again
