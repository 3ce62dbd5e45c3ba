"""OFA image processor: colour modes, bicubic resize, normalisation, batching, save/load, and clear load errors."""
import base64

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from distill.errors import UserError
from distill.images import ImageLoadError, image_size, load_image
from distill.ofa.image_processing_ofa import OFAImageProcessor

SIZE = 32


def _norm(v255):
    """OFA's normalisation of an 8-bit value: ToTensor (/255) then Normalize(0.5, 0.5)."""
    return (np.asarray(v255, dtype=np.float64) / 255.0 - 0.5) / 0.5


@pytest.fixture(scope="module")
def proc():
    return OFAImageProcessor(size=SIZE)


def _pixel(proc, img, path):
    img.save(path)
    px = proc(str(path), return_tensors="pt")["pixel_values"]
    assert px.shape == (1, 3, SIZE, SIZE) and px.dtype == torch.float32
    return px[0, :, SIZE // 2, SIZE // 2].double().numpy()  # uniform images: every pixel is the same


@pytest.mark.parametrize(
    "mode,color,suffix,expected_rgb",
    [
        ("L", 200, ".png", (200, 200, 200)),
        ("RGBA", (10, 20, 30, 0), ".png", (10, 20, 30)),  # alpha dropped, as OFA's convert("RGB")
        ("CMYK", (0, 255, 0, 0), ".tif", (255, 0, 255)),  # magenta ink only
        ("I;16", 128 * 257, ".png", (128, 128, 128)),  # 16-bit scaled down, not clipped at 255
        ("I;16", 65535, ".png", (255, 255, 255)),
    ],
)
def test_colour_modes_from_files(proc, tmp_path, mode, color, suffix, expected_rgb):
    img = Image.new(mode, (40, 24), color)
    px = _pixel(proc, img, tmp_path / f"x{suffix}")  # PNG / TIFF: lossless
    np.testing.assert_allclose(px, _norm(expected_rgb), atol=1e-6)


def test_palette_image(proc, tmp_path):
    img = Image.new("P", (30, 30), 3)
    palette = [0] * 768
    palette[9:12] = [12, 200, 77]  # entry 3
    img.putpalette(palette)
    np.testing.assert_allclose(_pixel(proc, img, tmp_path / "p.png"), _norm((12, 200, 77)), atol=1e-6)


def test_bicubic_resize_matches_torch_antialiased_bicubic(proc):
    """Independent reference: torch's antialiased bicubic is documented to follow PIL's within a few levels."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    arr = np.ascontiguousarray(np.repeat(np.repeat(arr[::4, ::4], 4, 0), 4, 1))  # smooth-ish blocks
    ours = proc(Image.fromarray(arr))["pixel_values"][0]
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].double() / 255.0
    ref = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)
    ref = (ref.clamp(0, 1)[0] - 0.5) / 0.5
    assert (ours.double() - ref).abs().mean() < 0.01  # mean error well under 2/255 in normalised units
    assert (ours.double() - ref).abs().max() < 0.1


def test_batching_and_equivalent_sources(proc, tmp_path):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(20, 36, 3), dtype=np.uint8))
    path = tmp_path / "a.png"
    img.save(path)
    raw = path.read_bytes()
    sources = [
        img, str(path), path, raw, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
        {"bytes": raw, "path": None}, {"bytes": None, "path": str(path)},
    ]  # fmt: skip
    px = proc(sources, return_tensors="pt")["pixel_values"]
    assert px.shape == (len(sources), 3, SIZE, SIZE)
    for i in range(1, len(sources)):
        assert torch.equal(px[0], px[i])
    assert image_size(raw) == (36, 20)
    assert proc([img], return_tensors="np")["pixel_values"].shape == (1, 3, SIZE, SIZE)


def test_save_and_load_pretrained(tmp_path):
    proc = OFAImageProcessor(size=64, mean=[0.4, 0.5, 0.6], std=0.25, resample="bilinear")
    proc.save_pretrained(tmp_path)
    again = OFAImageProcessor.from_pretrained(tmp_path)
    assert (again.size, again.mean, again.std, again.resample) == (64, [0.4, 0.5, 0.6], 0.25, "bilinear")
    img = Image.new("RGB", (10, 10), (1, 2, 3))
    assert torch.equal(proc(img)["pixel_values"], again(img)["pixel_values"])
    assert OFAImageProcessor().size == 480


def test_load_errors_name_the_file(tmp_path):
    assert issubclass(ImageLoadError, UserError)
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good, quality=95)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    for path in (truncated, garbage, tmp_path / "missing.jpg"):
        with pytest.raises(ImageLoadError, match=path.name):
            load_image(str(path))
    with pytest.raises(ImageLoadError, match="row-7"):
        load_image(data[: len(data) // 2], name="row-7")
    with pytest.raises(ImageLoadError, match="truncated.jpg"):
        load_image({"bytes": None, "path": str(truncated)})
    assert load_image(str(good)).size == (64, 64)


def orientation6_jpeg(path, size=(24, 40)) -> np.ndarray:
    """Write a JPEG whose EXIF orientation is 6 (shown turned 90 degrees clockwise); return the upright pixels,
    computed independently of PIL's transpose: the stored pixels rotated with numpy."""
    rng = np.random.default_rng(5)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, format="JPEG", quality=95, exif=exif)
    stored = np.asarray(Image.open(path).convert("RGB"))  # the decoded pixels as stored, before orientation
    return np.rot90(stored, k=-1)  # orientation 6: rotate 90 degrees clockwise to view


def test_exif_orientation_is_applied_on_every_input_form(proc, tmp_path):
    path = tmp_path / "rot6.jpg"
    upright = orientation6_jpeg(path)
    assert upright.shape[:2] == (24, 40)  # stored 24 wide x 40 high, shown 40 wide x 24 high
    raw = path.read_bytes()
    for src in (str(path), raw, {"bytes": raw, "path": None}, {"bytes": None, "path": str(path)}, Image.open(path)):
        img = load_image(src)
        assert img.size == (40, 24)
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), upright)
    assert image_size(str(path)) == image_size(raw) == (40, 24)  # header only, upright size
    # An image `datasets` already made upright (tag dropped) is not turned a second time.
    from datasets import Dataset, Features
    from datasets import Image as DsImage

    decoded = Dataset.from_dict({"image": [str(path)]}, features=Features({"image": DsImage()}))[0]["image"]
    np.testing.assert_array_equal(np.asarray(load_image(decoded).convert("RGB")), upright)
    expected = proc(Image.fromarray(upright), return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(proc(str(path), return_tensors="np")["pixel_values"], expected)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="is a folder, not an image file"):
        load_image(str(tmp_path))
