"""Bad raw data files: every reader names the file and the place, never a bare Python error.

Each reader (Karpathy split, COCO captions and instances, VQA questions and annotations,
bottom-up TSV, images) is fed damaged copies of real-format files built from coco-mini: bytes
that are not UTF-8, truncation, empty files, folders, wrong shapes. Each case is one row of
docs/RELIABILITY.md.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from coco_mini_fixtures import COCO_MINI, write_karpathy, write_vqa
from PIL import Image

import mia.features.images as images_mod
from mia.data.bottomup_tsv import iter_bottomup_tsv
from mia.data.coco import read_coco_captions, read_coco_instances
from mia.data.errors import DataFormatError
from mia.data.karpathy import read_karpathy
from mia.data.vqa_v2 import read_vqa_annotations, read_vqa_questions
from mia.features.images import BadImage, BadImagesError, Decoded, ImageDataset, resize_square

TSV = Path(__file__).resolve().parent / "data" / "bottomup" / "coco_mini_6.tsv"

# --------------------------------------------------------------------------- JSON readers


def _karpathy(tmp: Path) -> Path:
    return write_karpathy(tmp / "dataset_coco.json")


def _vqa_file(which: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        q, a = write_vqa(tmp)
        return q["train"] if which == "questions" else a["train"]
    return make


READERS = {
    "karpathy": (read_karpathy, _karpathy),
    "coco_captions": (read_coco_captions, lambda tmp: COCO_MINI / "captions.json"),
    "coco_instances": (read_coco_instances, lambda tmp: COCO_MINI / "instances.json"),
    "vqa_questions": (read_vqa_questions, _vqa_file("questions")),
    "vqa_annotations": (read_vqa_annotations, _vqa_file("annotations")),
}


def _latin1(raw: bytes) -> bytes:
    """Re-encode as Latin-1 (a file saved by the wrong editor): é becomes the lone byte 0xe9."""
    text = raw.decode()
    at = text.index('"', text.index(":")) + 1  # inside the first string value
    return (text[:at] + "caf\u00e9 " + text[at:]).encode("latin-1", "replace")


FAULTS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "not_utf8_latin1": (_latin1, "not UTF-8 text (byte 0xe9 at offset"),
    "not_utf8_0xff_mid_file": (lambda raw: raw[:len(raw) // 2] + b"\xff\xfe" + raw[len(raw) // 2:],
                               "not UTF-8 text (byte 0xff at offset"),
    "truncated": (lambda raw: raw[:len(raw) * 2 // 3], "not valid JSON"),
    "empty": (lambda raw: b"", "the file is empty"),
    "html_instead_of_json": (lambda raw: b"<html><body>Access denied</body></html>",
                             "not valid JSON"),
    "top_level_list": (lambda raw: b"[]", "not an object"),
    "nested_too_deep": (lambda raw: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("reader", list(READERS))
def test_json_reader_names_file_and_place(tmp_path, reader, fault):
    read, make = READERS[reader]
    good = make(tmp_path)
    corrupt, expected = FAULTS[fault]
    bad = tmp_path / f"bad_{good.name}"
    bad.write_bytes(corrupt(good.read_bytes()))
    with pytest.raises(DataFormatError) as err:
        read(bad)
    message = str(err.value)
    assert message.startswith(str(bad)) and expected in message, message


def test_non_utf8_offset_is_the_bad_byte(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_bytes(b'{"images": [{"raw": "ok \xff"}]}')
    with pytest.raises(DataFormatError, match="byte 0xff at offset 24"):
        read_karpathy(path)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_coco_box_with_nan_literal_refused(tmp_path, literal):
    """Python's json reads NaN/Infinity literals; a box holding one would pool NaN features."""
    text = (COCO_MINI / "instances.json").read_text()
    at = text.index('"bbox": [') + len('"bbox": [')
    bad = tmp_path / "instances_nan.json"
    bad.write_text(text[:at] + literal + text[text.index(",", at):])
    with pytest.raises(DataFormatError, match=r"annotations\[0\].*'bbox': expected 4 finite"):
        read_coco_instances(bad)


def test_utf8_bom_is_accepted(tmp_path):
    good = _karpathy(tmp_path)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + good.read_bytes())
    assert len(read_karpathy(bom)) == len(read_karpathy(good)) == 33


@pytest.mark.parametrize("reader", list(READERS))
def test_json_reader_missing_file_and_folder(tmp_path, reader):
    read, _ = READERS[reader]
    with pytest.raises(FileNotFoundError, match="file not found; run the download rule"):
        read(tmp_path / "missing.json")
    with pytest.raises(DataFormatError, match="is a folder, not a JSON file"):
        read(tmp_path)


# --------------------------------------------------------------------------- bottom-up TSV


def _tsv_lines() -> list[bytes]:
    return TSV.read_bytes().split(b"\r\n")[:3]


def _tsv_with_line2(tmp_path: Path, edit: Callable[[list[bytes]], list[bytes]] | None = None,
                    raw: bytes | None = None) -> Path:
    lines = _tsv_lines()
    if raw is not None:
        lines[1] = raw
    else:
        lines[1] = b"\t".join(edit(lines[1].split(b"\t")))
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


def _nan_features(fields: list[bytes]) -> list[bytes]:
    n = int(fields[3])
    values = np.frombuffer(base64.b64decode(fields[5]), "<f4").copy().reshape(n, -1)
    values[2, 7] = np.nan
    return [*fields[:5], base64.b64encode(values.tobytes())]


def _replace(column: int, value: bytes) -> Callable[[list[bytes]], list[bytes]]:
    return lambda fields: [*fields[:column], value, *fields[column + 1:]]


TSV_FAULTS = {
    "non_ascii_byte_in_base64": (_replace(4, b"\xff\xfe" + b"A" * 30), "'boxes'"),
    "latin1_in_image_id": (_replace(0, b"68\xe918"), "'image_id'"),
    "bad_base64_padding": (_replace(4, b"AAAAA"), "not valid base64"),
    "num_boxes_too_large": (_replace(3, b"9"), "decodes to"),
    "num_boxes_negative": (_replace(3, b"-2"), "must be positive"),
    "image_w_zero": (_replace(1, b"0"), "image size must be positive"),
    "nan_in_features": (_nan_features, "box 2 holds NaN or inf"),
    "short_row": (lambda fields: fields[:4], "expected 6 tab-separated columns"),
    "row_cut_mid_base64": (lambda fields: [*fields[:5], fields[5][:1001]], "not valid base64"),
    "nul_byte": (_replace(2, b"4\x0080"), "'image_h'"),
}


@pytest.mark.parametrize("fault", list(TSV_FAULTS))
def test_bottomup_tsv_bad_row_named_by_line_and_field(tmp_path, fault):
    edit, expected = TSV_FAULTS[fault]
    path = _tsv_with_line2(tmp_path, edit)
    stream = iter_bottomup_tsv(path)
    assert next(stream).image_id == 6818  # the good first row still streams
    with pytest.raises(DataFormatError) as err:
        next(stream)
    message = str(err.value)
    assert message.startswith(f"{path}: record line 2") and expected in message, message


def test_bottomup_tsv_file_cut_mid_row(tmp_path):
    data = TSV.read_bytes()
    path = tmp_path / "cut.tsv"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(DataFormatError, match=f"{path}: record line"):
        list(iter_bottomup_tsv(path))


def test_bottomup_tsv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="bottom-up features"):
        next(iter_bottomup_tsv(tmp_path / "trainval_36.tsv"))


# --------------------------------------------------------------------------- images


def _jpeg(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "CMYK": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png(size: tuple[int, int], mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG")
    return buf.getvalue()


def _png_flipped_byte() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    raw = bytearray(buf.getvalue())
    raw[raw.index(b"IDAT") + 6] ^= 0xFF  # inside the compressed pixels
    return bytes(raw)


def _decode(tmp_path: Path, data: bytes | None, name: str = "img.jpg") -> Decoded | BadImage:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    return ImageDataset([(42, str(path))], resize_square(16))[0]


BAD_IMAGES = {
    "truncated_jpeg": (lambda: _jpeg()[:600], "truncated"),
    "not_an_image": (lambda: b"this is a caption, not a picture\n", "UnidentifiedImageError"),
    "zero_bytes": (lambda: b"", "UnidentifiedImageError"),
    "html_error_page": (lambda: b"<html>404</html>", "UnidentifiedImageError"),
    "png_flipped_byte_in_pixels": (_png_flipped_byte, "broken data stream"),
    "missing_file": (lambda: None, "FileNotFoundError"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_comes_back_named(tmp_path, case):
    make, reason = BAD_IMAGES[case]
    out = _decode(tmp_path, make())
    assert isinstance(out, BadImage), out
    assert out.image_id == 42 and out.path == str(tmp_path / "img.jpg")
    assert reason.lower() in out.reason.lower()


def test_folder_instead_of_image(tmp_path):
    (tmp_path / "img.jpg").mkdir()
    out = _decode(tmp_path, None)
    assert isinstance(out, BadImage) and "IsADirectoryError" in out.reason


@pytest.mark.parametrize("ours, pils, reason", [
    (2_000, None, "50 x 50 pixels is more than the 2000 allowed"),
    (None, 2_000, "DecompressionBombWarning"),
    (None, 1_000, "DecompressionBombError"),
], ids=["our_limit", "pil_warning_limit", "pil_error_limit"])
def test_huge_dimensions_refused_before_decoding(tmp_path, monkeypatch, ours, pils, reason):
    """A 50 x 50 PNG stands in for a 65535 x 65535 one (a few hundred bytes that decode to
    gigabytes): refused by our limit, by PIL's warning limit (made an error) or its hard one."""
    if ours is not None:
        monkeypatch.setattr(images_mod, "MAX_PIXELS", ours)
    if pils is not None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pils)
    out = _decode(tmp_path, _png((50, 50)), "big.png")
    assert isinstance(out, BadImage) and reason in out.reason


@pytest.mark.parametrize("mode", ["CMYK", "L"])
def test_cmyk_and_grayscale_decode_to_rgb(tmp_path, mode):
    """COCO has both (a few hundred grayscale and CMYK JPEGs): they must decode, as RGB."""
    out = _decode(tmp_path, _jpeg(mode))
    assert isinstance(out, Decoded) and out.pixels.shape == (3, 16, 16)
    assert (out.width, out.height) == (40, 30)
    expected = Image.open(tmp_path / "img.jpg").convert("RGB").resize((16, 16), Image.BILINEAR)
    torch.testing.assert_close(out.pixels, images_mod.to_normalised_tensor(expected))
    if mode == "L":
        assert torch.allclose(out.pixels[0] * 0.229 + 0.485, out.pixels[1] * 0.224 + 0.456,
                              atol=1e-6)


def test_bad_images_error_lists_every_file_and_the_switch(tmp_path):
    bad = [BadImage(1, "a.jpg", "OSError: truncated"), BadImage(2, "b.jpg", "zero bytes")]
    message = str(BadImagesError(bad, "features.grid.skip_bad_images"))
    assert "image_id 1: a.jpg (OSError: truncated)" in message and "image_id 2: b.jpg" in message
    assert "features.grid.skip_bad_images: true" in message
    assert isinstance(BadImagesError(bad, "k"), ValueError)  # bad input: `mia` exits 2
