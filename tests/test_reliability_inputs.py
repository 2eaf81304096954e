"""Bad or unusual inputs give right values or one clear error (issue 12 items 1, 2, 3, 7): NaN/inf pixels, every
PIL mode, already-rescaled floats, empty lists, unreadable and oversized image files; the pixel check is one
reduction and one host sync, and is skipped while tracing (torch.export / torch.compile)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.utils import logging as hf_logging

from mage_hf import MageImageProcessor, MageModel, MageVQModel
from mage_hf.image_io import DEFAULT_MAX_PIXELS, open_image, pil_to_rgb_array
from mage_hf.vq_layers import VQTokenizer, check_pixel_values

# ----------------------------------------------------------------------------------------------- NaN / inf pixels


def _bad_pixels(kind: str) -> torch.Tensor:
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    if kind == "one_nan":
        pixels[1, 2, 5, 7] = float("nan")
    elif kind == "all_nan":
        pixels[:] = float("nan")
    elif kind == "inf":
        pixels[0, 0, 0, 0] = float("inf")
    elif kind == "minus_inf":
        pixels[0, 1, 3, 3] = -float("inf")
    return pixels


BAD_KINDS = ["one_nan", "all_nan", "inf", "minus_inf"]


@pytest.fixture
def vqvae(tiny_config) -> MageVQModel:
    torch.manual_seed(0)
    return MageVQModel(**tiny_config.vqvae_config).eval()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_vq_model_refuses_non_finite_pixels(vqvae, kind):
    for call in (vqvae.tokenize, lambda x: vqvae.encode(x), vqvae):
        with pytest.raises(ValueError, match=r"`pixel_values` must be finite"):
            call(_bad_pixels(kind))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_mage_model_refuses_non_finite_pixels(tiny_config, kind):
    model = MageModel(tiny_config).eval()
    with pytest.raises(ValueError, match=r"`pixel_values` must be finite"):
        model(pixel_values=_bad_pixels(kind))


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_tokenizer_refuses_non_finite_pixels_without_range_check(tiny_config, kind):
    """Models fed normalised pixels skip the [0, 1] check (`check_range=False`), not the finiteness check."""
    tokenizer = VQTokenizer(**tiny_config.vqvae_config).eval()
    tokenizer(_bad_pixels("none") * 3 - 1, check_range=False)  # normalised values are fine
    with pytest.raises(ValueError, match=r"must be finite"):
        tokenizer(_bad_pixels(kind), check_range=False)


def test_range_errors_are_unchanged(vqvae):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*\[-1\.000, "):
        vqvae.tokenize(_bad_pixels("none") * 2 - 1)


class _CountOps(TorchDispatchMode):
    """Records the aten ops run, and which ones read a tensor with `numel` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.full_reads, self.ops = numel, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        if any(isinstance(a, torch.Tensor) and a.numel() == self.numel for a in args):
            self.full_reads.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("check_range", [True, False])
def test_pixel_check_is_one_reduction_and_one_sync(check_range):
    pixels = torch.rand(2, 3, 32, 32)
    with _CountOps(pixels.numel()) as counter:
        check_pixel_values(pixels, 3, 16, check_range=check_range)
    assert counter.full_reads == ["aminmax"]  # one pass over the pixels: finiteness and range together
    assert counter.ops.count("_local_scalar_dense") == 1  # one `.item()`, the only host sync


def test_pixel_check_is_skipped_while_exporting(tiny_config):
    """No data-dependent branch under torch.export (dynamic batch); eager keeps the clear error."""
    tokenizer = VQTokenizer(**tiny_config.vqvae_config).eval()
    pixels = torch.rand(2, 3, 16, 16)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(tokenizer, (pixels,), dynamic_shapes={"pixel_values": {0: batch}})
    other_batch = torch.rand(5, 3, 16, 16)
    assert torch.equal(exported.module()(other_batch), tokenizer(other_batch))
    with pytest.raises(ValueError, match="finite"):
        tokenizer(_bad_pixels("one_nan"))


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_processor_refuses_non_finite_floats(kind, container):
    image = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32) * 255
    image[1, 4, 4] = float(kind)
    image = torch.from_numpy(image) if container == "torch" else image
    processor = MageImageProcessor(size={"shortest_edge": 16}, crop_size=16)
    for do_resize in (True, False):
        with pytest.raises(ValueError, match=r"`images` must hold finite pixel values"):
            processor(image, do_resize=do_resize, do_center_crop=do_resize, return_tensors="pt")


# ----------------------------------------------------------------------------------------------- PIL modes

REFERENCE_RGB = np.array([[[255, 0, 0], [0, 128, 255], [10, 200, 30], [255, 255, 255], [0, 0, 0], [90, 60, 200]]],
                         dtype=np.uint8)


# Largest error (in 1/255) of each colour space's round trip through PIL's own conversion.
@pytest.mark.parametrize("mode,tolerance", [
    ("RGB", 0), ("RGBX", 0), ("CMYK", 0), ("YCbCr", 3), ("HSV", 5), ("LAB", 16), ("P", 0),
    ("RGBA", 0), ("RGBa", 0),
])
def test_colour_modes_map_back_to_their_rgb(mode, tolerance):
    rgb = Image.fromarray(REFERENCE_RGB)
    image = rgb.quantize() if mode == "P" else rgb.convert(mode)  # an adaptive palette holds these colours exactly
    pixels = pil_to_rgb_array(image)
    assert pixels.dtype == np.float32 and pixels.shape == REFERENCE_RGB.shape
    assert np.abs(pixels * 255 - REFERENCE_RGB).max() <= tolerance + 1e-3


@pytest.mark.parametrize("mode", ["1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"])
def test_grey_modes_are_scaled_by_their_range(mode):
    fraction = np.array([[0.0, 0.25, 0.5, 1.0]])
    if mode == "1":
        image, expected = Image.fromarray(fraction >= 0.5), (fraction >= 0.5).astype(float)
    elif mode in ("L", "LA", "La"):
        grey = np.rint(fraction * 255).astype(np.uint8)
        image, expected = Image.fromarray(grey).convert("LA" if mode != "L" else "L"), grey / 255
        image = image.convert(mode)
    elif mode == "F":
        image, expected = Image.fromarray(fraction.astype(np.float32)), fraction
    else:
        values = np.rint(fraction * 65535)
        dtype = {"I": "<i4", "I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2"}[mode]
        raw_mode = "I;32" if mode == "I" else mode
        image = Image.frombytes(mode, (4, 1), values.astype(dtype).tobytes(), "raw", raw_mode)
        expected = values / 65535
        assert image.mode == mode
    pixels = pil_to_rgb_array(image)
    assert pixels.shape == (1, 4, 3) and np.allclose(pixels, expected[..., None], atol=1e-6)


def test_sixteen_bit_png_does_not_saturate(tmp_path):
    """Before: every non-zero pixel of an `I;16` PNG became 1.0 (through `convert("RGB")`)."""
    values = np.array([[0, 257, 4096, 32768], [40000, 50000, 60000, 65535]] * 2, dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = open_image(tmp_path / "deep.png")
    assert image.mode == "I;16"
    assert np.allclose(pil_to_rgb_array(image)[..., 0], values / 65535, atol=1e-6)
    processor = MageImageProcessor(do_resize=False, do_center_crop=False)
    for source in (image, str(tmp_path / "deep.png")):
        pixel_values = processor(source, return_tensors="pt").pixel_values
        assert pixel_values.shape == (1, 3, 4, 4)
        assert np.abs(pixel_values[0].numpy() - values / 65535).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only


@pytest.mark.parametrize("values", [np.array([[-1, 10]], np.int32), np.array([[0, 70000]], np.int32),
                                    np.array([[0.0, 1.5]], np.float32), np.array([[np.nan, 0.5]], np.float32)])
def test_modes_whose_range_cannot_be_known_raise(values):
    with pytest.raises(ValueError, match=r"mode '(I|F)' image"):
        pil_to_rgb_array(Image.fromarray(values))


@pytest.mark.parametrize("mode", ["RGBA", "RGBa", "LA", "La", "PA"])
@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (0, 128, 255)])
def test_transparency_is_composited_on_the_background(mode, background):
    colour, alpha = np.array([200, 100, 50]), 128
    rgba = Image.new("RGBA", (2, 1), (*colour, alpha))
    rgba.putpixel((1, 0), (*colour, 0))
    if mode in ("LA", "La"):
        image, colour = rgba.convert("LA"), np.full(3, np.asarray(rgba.convert("L"))[0, 0])
        image = image.convert(mode)
    elif mode == "PA":
        image = Image.new("PA", (2, 1))
        image.putpalette(list(colour) + [0] * 765)
        image.putdata([(0, alpha), (0, 0)])
    else:
        image = rgba.convert(mode)
    pixels = pil_to_rgb_array(image, background=background) * 255
    weight = alpha / 255
    assert np.abs(pixels[0, 0] - (colour * weight + np.array(background) * (1 - weight))).max() <= 1.5  # RGBa rounding
    assert np.allclose(pixels[0, 1], background, atol=1e-3)  # fully transparent -> the background


@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_transparency_key_is_composited(mode):
    image = Image.fromarray(REFERENCE_RGB).convert(mode)
    key_pixel = np.asarray(image)[0, 3]  # the white pixel
    image.info["transparency"] = int(key_pixel) if mode != "RGB" else tuple(int(v) for v in key_pixel)
    pixels = pil_to_rgb_array(image, background=(0, 255, 0))
    assert np.allclose(pixels[0, 3] * 255, (0, 255, 0), atol=1e-3)
    assert not np.allclose(pixels[0, 0] * 255, (0, 255, 0), atol=1)


def test_processor_background_color_option(tmp_path):
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    processor = MageImageProcessor(do_resize=False, do_center_crop=False)
    assert processor.background_color == (255, 255, 255)
    assert torch.all(processor(image, return_tensors="pt").pixel_values == 1.0)
    black = processor(image, background_color=(0, 0, 0), return_tensors="pt").pixel_values
    assert torch.all(black == 0.0)
    saved = MageImageProcessor(background_color=(0, 128, 255))
    saved.save_pretrained(tmp_path)
    loaded = MageImageProcessor.from_pretrained(tmp_path)
    assert list(loaded.background_color) == [0, 128, 255]
    with pytest.raises(ValueError, match="background"):
        processor(image, background_color=(300, 0, 0))


# ----------------------------------------------------------------------------------------------- rescaling


def test_float_input_in_unit_range_with_do_rescale_false_is_kept():
    image = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    processor = MageImageProcessor(do_resize=False, do_center_crop=False)
    pixel_values = processor(image, do_rescale=False, return_tensors="pt").pixel_values
    assert torch.allclose(pixel_values[0], torch.from_numpy(image))


def test_rescaling_already_rescaled_floats_warns(caplog):
    image = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    processor = MageImageProcessor(do_resize=False, do_center_crop=False)
    hf_logging.warning_once.cache_clear()
    with caplog.at_level("WARNING"):
        processor(image, return_tensors="pt")
    assert "do_rescale=False" in caplog.text
    caplog.clear()
    hf_logging.warning_once.cache_clear()
    with caplog.at_level("WARNING"):
        processor(image * 255, return_tensors="pt")  # floats in [0, 255]: the normal case, no warning
        processor(Image.fromarray(REFERENCE_RGB), return_tensors="pt")
    assert "do_rescale=False" not in caplog.text


def test_processor_refuses_an_empty_list():
    with pytest.raises(ValueError, match=r"`images` must hold at least one image, got an empty list"):
        MageImageProcessor()([], return_tensors="pt")


# ----------------------------------------------------------------------------------------------- image files


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`x`height` (its data is never decoded: open reads the header only)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_decompression_bomb_names_the_file_and_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_claiming(15000, 15000))
    with pytest.raises(ValueError, match=rf"bomb\.png: 225,000,000 pixels exceeds the limit of {DEFAULT_MAX_PIXELS:,}"):
        open_image(path)
    with pytest.raises(ValueError, match=r"bomb\.png: .*PIL\.Image\.MAX_IMAGE_PIXELS"):
        open_image(path, max_pixels=None)  # PIL's own guard still applies
    with pytest.raises(ValueError, match=r"bomb\.png"):
        MageImageProcessor()(str(path))
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    with pytest.raises(ValueError, match=r"small\.png: 1,200 pixels exceeds the limit of 1,000 pixels \(`max_pixels`"):
        open_image(small, max_pixels=1000)
    assert open_image(small, max_pixels=1200).size == (40, 30)
    with pytest.raises(ValueError, match="max_pixels"):
        open_image(small, max_pixels=0)


def test_unreadable_files_name_the_file(tmp_path):
    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "good.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / "text.png").write_text("not an image")
    for name, reason in [("cut.png", "truncated"), ("text.png", "not an image"), ("missing.png", "No such file")]:
        with pytest.raises(ValueError, match=rf"{name}.*{reason}"):
            open_image(tmp_path / name)


@pytest.mark.parametrize("suffix", [".png", ".gif", ".tif"])
def test_open_image_loads_fully_and_closes_the_file(tmp_path, suffix):
    frames = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(3)]
    path = tmp_path / f"frames{suffix}"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    image = open_image(path)
    assert getattr(image, "fp", None) is None or image.fp.closed
    path.unlink()  # the pixels are in memory, not read lazily from the file
    assert pil_to_rgb_array(image).shape == (8, 8, 3)
