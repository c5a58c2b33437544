"""Fundus preprocessing: loading every image mode (photographs), finding the disc (disc),
crop and Ben Graham (fundus)."""

import io
import struct
import threading
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

from drgrade.data.disc import Fundus, find_fundus
from drgrade.data.fundus import ben_graham, crop_square, preprocess, preprocess_photograph
from drgrade.data.photographs import (
    MAX_MEGAPIXELS_ENV,
    NotAnImage,
    RejectedImage,
    TooManyPixels,
    load_photograph,
    read_photograph,
)
from drgrade.errors import DrgradeError

FUNDUS_ORANGE = (190, 95, 40)


def draw_fundus(width, height, cx, cy, r, level=FUNDUS_ORANGE, background=4.0, noise=2.0):
    """A synthetic photograph: a vignetted orange disc with dark 'vessels' on a dark field."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    distance = np.hypot(xx + 0.5 - cx, yy + 0.5 - cy)
    inside = np.clip(r - distance + 0.5, 0, 1)
    shade = 1 - 0.45 * np.clip(distance / r, 0, 1) ** 2
    vessels = 1 - 0.35 * (np.abs(np.sin((xx - cx) / r * 9 + (yy - cy) / r * 3)) < 0.08)
    colour = np.array(level, np.float32) * (shade * vessels)[..., None]
    pixels = background + inside[..., None] * (colour - background)
    pixels += rng.normal(0, noise, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def truth(cx, cy, r):
    return (cx - r, cy - r, cx + r, cy + r)


def assert_box_near(found: Fundus, expected, tolerance=3):
    assert found.circular
    assert np.abs(np.subtract(found.box, expected)).max() <= tolerance, (found.box, expected)


# --- finding the disc ----------------------------------------------------------------------


def test_full_circle_on_wide_dark_border():
    assert_box_near(find_fundus(draw_fundus(800, 600, 400, 300, 250)), truth(400, 300, 250))


def test_circle_clipped_at_top_and_bottom_is_padded_to_its_full_square():
    # EyePACS/IDRiD style: the disc is wider than the frame is tall.
    found = find_fundus(draw_fundus(1072, 712, 536, 356, 430))
    assert_box_near(found, truth(536, 356, 430))
    assert found.box[1] < 0 and found.box[3] > 712  # reaches past the photograph


def test_circle_clipped_at_the_top_only_keeps_its_true_centre():
    # The box centre must be the disc's, not the middle of the visible part.
    assert_box_near(find_fundus(draw_fundus(1072, 712, 520, 300, 430)), truth(520, 300, 430))


def test_dim_photograph():
    image = draw_fundus(800, 600, 410, 290, 260, level=(28, 14, 6), background=2, noise=1.5)
    assert_box_near(find_fundus(image), truth(410, 290, 260))


def test_text_in_the_border_is_ignored():
    image = draw_fundus(1072, 712, 536, 356, 430)
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), "OD 2015-03-02 PATIENT 12345", fill=(255, 255, 255), font_size=40)
    draw.text((880, 650), "LEFT", fill=(255, 200, 0), font_size=48)
    draw.rectangle((20, 600, 90, 700), fill=(230, 230, 230))  # a solid label block
    assert_box_near(find_fundus(image), truth(536, 356, 430))


def test_notch_in_the_rim_is_ignored():
    image = draw_fundus(1072, 712, 536, 356, 430)
    ImageDraw.Draw(image).polygon([(900, 100), (985, 55), (1005, 145)], fill=(4, 4, 4))
    assert_box_near(find_fundus(image), truth(536, 356, 430))


def test_large_photograph_box_in_full_resolution_pixels():
    found = find_fundus(draw_fundus(2400, 1600, 1200, 800, 960))
    assert_box_near(found, truth(1200, 800, 960), tolerance=5)  # 0.25% of the diameter


def test_photograph_cropped_inside_the_disc_keeps_the_whole_frame():
    # Bright to every corner: no dark border to find, so nothing is cut away.
    image = draw_fundus(400, 300, 200, 150, 400)
    assert find_fundus(image) == Fundus((0, -50, 400, 350), circular=False)


@pytest.mark.parametrize(("image", "reason"), [
    (Image.new("RGB", (300, 200)), "blank"),
    (Image.new("RGB", (300, 200), (128, 128, 128)), "blank"),
    (Image.new("RGB", (20, 300), (128, 60, 30)), "too small"),
])
def test_unusable_images_are_rejected_with_a_reason(image, reason):
    with pytest.raises(RejectedImage) as caught:
        find_fundus(image)
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize("colour", [(235, 235, 235), (120, 120, 120), (60, 110, 200)])
def test_frame_filling_pictures_that_are_not_red_are_rejected(colour):
    # A white screenshot, a grey frame, a blue picture: bright to the corners like a
    # photograph cropped inside the disc, but without a fundus's colour.
    with pytest.raises(RejectedImage, match="no fundus found \\(no dark border, and not red"):
        find_fundus(draw_fundus(400, 300, 200, 150, 400, level=colour))


def test_a_grey_disc_on_black_is_a_fundus():
    # Red-free (greyscale) fundus photographs: the disc's edge is evidence enough.
    assert_box_near(find_fundus(draw_fundus(400, 300, 200, 150, 140, level=(150, 150, 150))),
                    truth(200, 150, 140))


def test_black_frame_with_only_a_label_has_no_fundus():
    image = Image.new("RGB", (600, 400), (3, 3, 3))
    ImageDraw.Draw(image).text((20, 20), "NO IMAGE 2015-03-02", fill=(255, 255, 255),
                               font_size=40)
    with pytest.raises(RejectedImage, match="no fundus found"):
        find_fundus(image)


def test_small_bright_spot_is_not_a_fundus():
    image = draw_fundus(800, 600, 400, 300, 40)
    with pytest.raises(RejectedImage, match="no fundus found"):
        find_fundus(image)


# --- crop and enhance ----------------------------------------------------------------------


def test_crop_square_is_black_outside_the_disc_and_in_the_padding():
    image = draw_fundus(1072, 712, 536, 356, 430)
    square, mask = crop_square(image, find_fundus(image), 128)
    pixels = np.asarray(square).astype(int)
    assert square.size == (128, 128) and mask.size == (128, 128)
    assert pixels[:4].max() <= 2 and pixels[-4:].max() <= 2  # padding above and below
    assert pixels[0, 0].max() == 0 and pixels[64, 64].max() > 100
    # The disc fills the square from side to side.
    middle = pixels[60:68].max(axis=(0, 2))
    assert middle[1] > 40 and middle[-2] > 40


def test_ben_graham_flattens_illumination_without_a_bright_rim():
    image = draw_fundus(800, 800, 400, 400, 400, noise=0)  # strong vignetting
    square, mask = crop_square(image, find_fundus(image), 256)
    enhanced = np.asarray(ben_graham(square, mask)).astype(float)
    yy, xx = np.mgrid[:256, :256]
    distance = np.hypot(xx + 0.5 - 128, yy + 0.5 - 128)
    rim, centre = enhanced[(distance > 118) & (distance < 126)], enhanced[distance < 60]
    assert abs(np.median(centre) - 128) < 12 and abs(np.median(rim) - 128) < 20
    assert enhanced[distance > 129].max() == 0  # black outside the disc
    # The original's centre-to-rim falloff (45%) is gone.
    assert np.median(centre) - np.median(rim) < 15


def test_ben_graham_default_mask_is_the_inscribed_circle():
    square = Image.new("RGB", (64, 64), (150, 80, 40))
    enhanced = np.asarray(ben_graham(square))
    assert enhanced[0, 0].max() == 0
    assert np.abs(enhanced[32, 32].astype(int) - 128).max() <= 2  # flat colour -> grey


# --- loading every kind of file ------------------------------------------------------------


def save(image, path, **options):
    image.save(path, **options)
    return path


def png_rgb16(pixels: np.ndarray, path):
    """Write a 16-bit-per-channel RGB PNG by hand (PIL cannot write one)."""
    height, width, _ = pixels.shape
    raw = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def test_cmyk_jpeg_comes_back_in_the_right_colours(tmp_path):
    colour = Image.new("RGB", (64, 64), FUNDUS_ORANGE).convert("CMYK")
    loaded = load_photograph(save(colour, tmp_path / "cmyk.jpg", quality=95), 64)
    assert loaded.mode == "RGB"
    assert np.abs(np.asarray(loaded)[32, 32].astype(int) - FUNDUS_ORANGE).max() <= 3


def test_greyscale_and_palette_become_rgb(tmp_path):
    grey = load_photograph(save(Image.new("L", (40, 40), 90), tmp_path / "grey.png"), 40)
    assert grey.mode == "RGB" and tuple(grey.getpixel((5, 5))) == (90, 90, 90)
    palette = Image.new("RGB", (40, 40), FUNDUS_ORANGE).convert("P", palette=Image.ADAPTIVE)
    loaded = load_photograph(save(palette, tmp_path / "palette.png"), 40)
    assert np.abs(np.subtract(loaded.getpixel((5, 5)), FUNDUS_ORANGE)).max() <= 8


def test_transparency_is_composited_on_black(tmp_path):
    rgba = Image.new("RGBA", (40, 40), (*FUNDUS_ORANGE, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # fully transparent white: must be black
    rgba.putpixel((1, 0), (200, 200, 200, 128))  # half transparent: half as bright
    loaded = load_photograph(save(rgba, tmp_path / "rgba.png"), 40)
    assert loaded.getpixel((0, 0)) == (0, 0, 0)
    assert np.abs(np.subtract(loaded.getpixel((1, 0)), (100, 100, 100))).max() <= 1
    assert loaded.getpixel((5, 5)) == FUNDUS_ORANGE
    la = load_photograph(save(Image.new("LA", (40, 40), (80, 0)), tmp_path / "la.png"), 40)
    assert la.getpixel((5, 5)) == (0, 0, 0)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    grey16 = Image.fromarray(values)
    assert grey16.mode == "I;16"
    loaded = np.asarray(load_photograph(save(grey16, tmp_path / "grey16.png"), 4))
    assert loaded[0, :, 0].tolist() == [0, 64, 128, 255]
    colour = np.zeros((4, 4, 3), np.uint16)
    colour[...] = (60000, 30000, 1000)
    rgb16 = load_photograph(png_rgb16(colour, tmp_path / "rgb16.png"), 4)
    assert np.abs(np.subtract(rgb16.getpixel((0, 0)), (233, 117, 4))).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (60, 40), (200, 0, 0))
    image.paste((0, 0, 200), (0, 0, 10, 40))  # a blue band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    loaded = load_photograph(save(image, tmp_path / "turned.jpg", exif=exif, quality=95), 40)
    # Turned a quarter clockwise: the band on the left is now along the top.
    assert loaded.size == (40, 60)
    assert loaded.getpixel((20, 4))[2] > 150 and loaded.getpixel((20, 50))[0] > 150


def test_large_jpeg_is_decoded_at_reduced_scale(shared_data):
    photograph = shared_data / "idrid-train/fullres/IDRiD_001.jpg"
    loaded = load_photograph(photograph, 512)
    assert loaded.size == (1072, 712)  # 4288x2848 / 4: the smallest scale >= 512


def test_truncated_jpeg_is_rejected_even_if_pil_was_told_to_accept_it(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    draw_fundus(200, 150, 100, 75, 70).save(buffer, "JPEG", quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[:-200])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some libraries do
    with pytest.raises(RejectedImage, match="truncated"):
        load_photograph(path, 64)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is left as it was


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file"),
    (b"this is a text file, not a photograph\n", "not an image"),
    (bytes(range(256)) * 20, "not an image"),
])
def test_files_that_are_not_images(tmp_path, content, reason):
    path = tmp_path / "photo.jpg"
    path.write_bytes(content)
    with pytest.raises(RejectedImage, match=reason):
        load_photograph(path, 64)


# --- preprocess ----------------------------------------------------------------------------


def test_preprocess_names_the_file_when_it_rejects(tmp_path):
    path = save(Image.new("RGB", (100, 100)), tmp_path / "black.png")
    with pytest.raises(RejectedImage) as caught:
        preprocess(path, 64)
    assert caught.value.reason.startswith("blank") and str(path) in str(caught.value)


def test_preprocess_rejects_an_unknown_enhancement(tmp_path):
    with pytest.raises(DrgradeError, match="ben-graham"):
        preprocess(tmp_path / "x.jpg", 64, enhance="clahe")


def test_preprocess_npz_reference_is_resized_not_cropped(shared_data):
    npz = shared_data / "retinamnist/retinamnist.npz"
    with np.load(npz) as arrays:
        original = arrays["test_images"][7]
    out = preprocess(f"{npz}#test/7", 28)
    assert out.size == (28, 28) and np.array_equal(np.asarray(out), original)
    assert preprocess(f"{npz}#test/7", 64, enhance="ben-graham").size == (64, 64)


# --- decompression bombs and the pixel limit -----------------------------------------------


class DecodeStarted(Exception):
    """Raised in place of decoding pixels, to show how far a load got."""


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixel data fails the test with DecodeStarted."""
    def load(self):
        raise DecodeStarted(self.size)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# 196 MP is past Pillow's own error threshold (2 x 89.5 MP), 100 MP past its warning one.
@pytest.mark.parametrize("side", [14000, 10000])
def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, no_decoding, side,
                                                        bilevel_png):
    data = bilevel_png(side, side)
    assert len(data) < 100_000
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for source in (path, io.BytesIO(data)):
            with pytest.raises(TooManyPixels) as rejected:
                load_photograph(source, 512)
            reason = rejected.value.reason
            megapixels = side * side / 1e6
            assert f"{side}x{side} px ({megapixels:.1f} megapixels)" in reason
            assert "over the 80-megapixel limit" in reason
            assert f"{MAX_MEGAPIXELS_ENV}={megapixels:.0f}" in reason
        with pytest.raises(TooManyPixels, match=str(path)):
            preprocess(path, 512)
    assert caught == []  # Pillow's DecompressionBombWarning never shows
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # and its setting is back


def test_the_pixel_limit_comes_from_the_parameter_then_the_environment(
        tmp_path, monkeypatch, no_decoding, bilevel_png):
    path = tmp_path / "bomb.png"
    path.write_bytes(bilevel_png(13000, 13000))
    # Raised past the file: the header passes, and neither Pillow's warning nor its error
    # (a limit of its own) stops the decode.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DecodeStarted):
            load_photograph(path, 512, max_megapixels=170)
        monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "170")
        with pytest.raises(DecodeStarted):
            load_photograph(path, 512)
    assert caught == []
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, "20")
    with pytest.raises(TooManyPixels, match="over the 20-megapixel limit"):
        load_photograph(path, 512)
    with pytest.raises(DecodeStarted):  # the parameter wins over the environment
        load_photograph(path, 512, max_megapixels=170)


@pytest.mark.parametrize("value", ["lots", "0", "-5", "nan"])
def test_a_bad_pixel_limit_is_a_clear_error(tmp_path, monkeypatch, value):
    path = save(Image.new("RGB", (40, 40)), tmp_path / "small.png")
    monkeypatch.setenv(MAX_MEGAPIXELS_ENV, value)
    with pytest.raises(DrgradeError, match=f"{MAX_MEGAPIXELS_ENV}='{value}': .* positive"):
        load_photograph(path, 40)
    with pytest.raises(DrgradeError, match="max_megapixels=0: .* positive"):
        load_photograph(path, 40, max_megapixels=0)


def test_a_picture_far_wider_than_tall_is_refused_before_its_square_is_cropped(tmp_path):
    # 2 MP, but bright to the corners: its fundus square would be 20000x20000 (1.2 GB).
    red = np.linspace(150, 210, 20000)[None, :].repeat(100, axis=0)
    pixels = np.stack([red, np.full_like(red, 80), np.full_like(red, 30)], axis=2)
    path = save(Image.fromarray(pixels.astype(np.uint8)), tmp_path / "strip.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TooManyPixels) as rejected:
            preprocess(path, 64)
    assert caught == []
    assert str(path) in str(rejected.value)
    assert rejected.value.reason.startswith("the fundus square to crop is 20000x20000 px")


def test_concurrent_loads_restore_pillows_settings(tmp_path):
    path = save(draw_fundus(200, 150, 100, 75, 70), tmp_path / "fundus.png")
    before = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    threads = [threading.Thread(target=preprocess, args=(path, 64)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before


@pytest.mark.parametrize(("image", "suffix"), [
    (Image.new("RGB", (40, 40), FUNDUS_ORANGE), "GIF"),
    (Image.new("RGB", (40, 40), FUNDUS_ORANGE), "ICO"),  # may hold a larger PNG inside
])
def test_formats_that_are_not_photographs_are_refused(tmp_path, image, suffix):
    path = save(image, tmp_path / "photo.jpg", format=suffix)
    with pytest.raises(NotAnImage, match="not an image in a format drgrade reads"):
        load_photograph(path, 40)


# --- greyscale photographs -----------------------------------------------------------------


@pytest.mark.parametrize(("image", "greyscale"), [
    (Image.new("L", (40, 40), 90), True),
    (Image.new("LA", (40, 40), (90, 255)), True),
    (Image.fromarray(np.full((40, 40), 30000, np.uint16)), True),  # I;16
    (Image.new("1", (40, 40), 1), True),
    (Image.new("RGB", (40, 40), FUNDUS_ORANGE), False),
    (Image.new("RGB", (40, 40), FUNDUS_ORANGE).convert("P", palette=Image.ADAPTIVE), False),
])
def test_greyscale_photographs_are_flagged(tmp_path, image, greyscale):
    photograph = read_photograph(save(image, tmp_path / "photo.png"), 40)
    assert photograph.image.mode == "RGB" and photograph.file_mode == image.mode
    assert photograph.greyscale is greyscale
    if greyscale:
        assert photograph.warning.startswith(f"greyscale photograph (mode {image.mode})")
        assert "trained on colour" in photograph.warning
    else:
        assert photograph.warning is None


def test_preprocess_photograph_says_whether_the_model_saw_colour(tmp_path):
    fundus = draw_fundus(200, 150, 100, 75, 70)
    grey = preprocess_photograph(save(fundus.convert("L"), tmp_path / "grey.png"), 64)
    colour = preprocess_photograph(save(fundus, tmp_path / "colour.png"), 64)
    assert grey.greyscale and grey.image.size == (64, 64) and grey.image.mode == "RGB"
    assert not colour.greyscale and colour.warning is None
    same = preprocess(tmp_path / "colour.png", 64)
    assert np.array_equal(np.asarray(colour.image), np.asarray(same))
