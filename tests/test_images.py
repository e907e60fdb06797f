"""Images of every PIL mode become the right RGB, and bad files never turn into another item (issue 15, item 8).

Every image is made on the fly with PIL in tmp_path.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from varbench.data.folders import ImageFolderData, ImageTooLarge
from varbench.data.transforms import ALPHA_BACKGROUND, to_rgb


def rgb(img: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(img)).astype(int)


def saved(img: Image.Image, path, **kw) -> Image.Image:
    """Save as PNG and open again: the mode PIL gives back when reading the file."""
    img.save(path, **kw)
    return Image.open(path)


def test_sixteen_bit_grey_keeps_its_values(tmp_path):
    grey = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    png = saved(Image.fromarray(grey), tmp_path / "g16.png")
    assert png.mode == "I;16"
    out = rgb(png)
    assert out[0, :, 0].tolist() == [0, 4, 128, 255] and (out == out[..., :1]).all()  # not white, grey
    wide = Image.fromarray(grey.astype(np.int32))  # 32-bit "I" read as 16-bit
    assert wide.mode == "I" and rgb(wide)[0, :, 1].tolist() == [0, 4, 128, 255]
    with pytest.raises(ValueError, match="0..65535"):
        to_rgb(Image.fromarray(np.array([[70000]], dtype=np.int32)))


def test_grey_and_palette_modes(tmp_path):
    assert rgb(saved(Image.new("L", (2, 2), 100), tmp_path / "l.png"))[0, 0].tolist() == [100, 100, 100]
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    assert rgb(saved(pal, tmp_path / "p.png")).tolist() == [[[10, 20, 30], [200, 100, 50]]]


def test_alpha_is_composited_on_white(tmp_path):
    assert ALPHA_BACKGROUND == (255, 255, 255)
    rgba = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 128], [0, 0, 255, 255]]], dtype=np.uint8), "RGBA")
    assert rgb(saved(rgba, tmp_path / "rgba.png")).tolist() == [[[255, 255, 255], [255, 127, 127], [0, 0, 255]]]
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    assert rgb(saved(la, tmp_path / "la.png")).tolist() == [[[255, 255, 255], [0, 0, 0]]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    transparent = saved(pal, tmp_path / "pt.png", transparency=0)
    assert transparent.mode == "P" and "transparency" in transparent.info
    assert rgb(transparent).tolist() == [[[255, 255, 255], [0, 255, 0]]]


def write_classes(root, images: dict) -> None:
    for rel, img in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, bytes):
            (root / rel).write_bytes(img)
        else:
            img.save(root / rel)


def test_images_of_every_mode_load_through_the_folder(tmp_path):
    write_classes(tmp_path, {"a/g16.png": Image.fromarray(np.full((8, 8), 1000, np.uint16)),
                             "a/rgba.png": Image.new("RGBA", (8, 8), (0, 0, 0, 0)),
                             "b/la.png": Image.new("LA", (8, 8), (0, 0))})
    ds = ImageFolderData(tmp_path, "val", image_size=8)
    x = [ds[i][0] for i in range(3)]
    assert x[0].max() < -0.9 and x[1].min() == 1.0 and x[2].min() == 1.0  # dark grey; white; white


def good(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8))


def test_unreadable_files_are_dropped_at_indexing_not_replaced(tmp_path):
    write_classes(tmp_path / "data", {"cat/0.png": good(0), "cat/broken.jpg": b"\xff\xd8\xff\xe0 not a jpeg",
                                      "dog/0.png": good(1), "dog/1.png": good(2)})
    ds = ImageFolderData(tmp_path / "data", "val", image_size=8, index_dir=tmp_path / "run")
    assert len(ds) == 3 and [ds[i][1] for i in range(3)] == [0, 1, 1]
    assert [os.path.basename(p) for p, _ in ds.samples] == ["0.png", "0.png", "1.png"]
    assert ds.report()["unreadable"] == 1 and ds.report()["indexed"] == 3
    index = json.loads((tmp_path / "run" / "data_index_val.json").read_text())
    assert [d["path"].endswith("broken.jpg") and d["label"] == 0 for d in index["dropped"]] == [True]
    assert index["indexed"] == 3


def test_truncated_pixels_fail_loudly_or_are_dropped_with_verify(tmp_path):
    write_classes(tmp_path, {"a/0.png": good(0), "a/1.png": good(1)})
    full = (tmp_path / "a/1.png").read_bytes()
    (tmp_path / "a/1.png").write_bytes(full[: len(full) // 2])  # the header survives, the pixels do not
    ds = ImageFolderData(tmp_path, "val", image_size=8)
    assert len(ds) == 2
    with pytest.raises(RuntimeError, match=r"1\.png.*data\.verify=true"):
        ds[1]
    verified = ImageFolderData(tmp_path, "val", image_size=8, verify=True)
    assert len(verified) == 1 and verified.report()["unreadable"] == 1


def test_symlink_loops_and_cross_class_links_are_refused(tmp_path):
    write_classes(tmp_path / "loop", {"a/0.png": good(0), "b/0.png": good(1)})
    os.symlink("..", tmp_path / "loop/a/up")
    with pytest.raises(ValueError, match=r"loop/a/up.*symlink loop"):
        ImageFolderData(tmp_path / "loop", "val", image_size=8)
    write_classes(tmp_path / "cross", {"a/0.png": good(0), "b/0.png": good(1)})
    os.symlink("../b", tmp_path / "cross/a/b_images")
    with pytest.raises(ValueError, match=r"cross/b.*cross/a/b_images"):
        ImageFolderData(tmp_path / "cross", "val", image_size=8)
    write_classes(tmp_path / "file", {"a/0.png": good(0), "b/0.png": good(1)})
    os.symlink("../b/0.png", tmp_path / "file/a/1.png")
    with pytest.raises(ValueError, match="one image"):
        ImageFolderData(tmp_path / "file", "val", image_size=8)


def png_header_claiming(path, width: int, height: int) -> None:
    """A PNG whose header says width x height (a tiny body): refused from the header, before any decode."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def test_images_above_the_pixel_limit_are_refused(tmp_path):
    write_classes(tmp_path, {"a/0.png": good(0)})
    png_header_claiming(tmp_path / "a/huge.png", 10_000, 10_000)  # 100 Mpixel > PIL's 89.5
    with pytest.raises(ImageTooLarge, match=r"huge\.png is 10000x10000 = 100\.0 Mpixel.*data\.max_pixels"):
        ImageFolderData(tmp_path, "val", image_size=8)
    (tmp_path / "a/huge.png").unlink()
    with pytest.raises(ImageTooLarge, match=r"0\.png is 12x12.*max_pixels=100"):
        ImageFolderData(tmp_path, "val", image_size=8, max_pixels=100)
    png_header_claiming(tmp_path / "a/bomb.png", 20_000, 20_000)  # above PIL's own hard limit
    with pytest.raises(ImageTooLarge, match=r"bomb\.png"):
        ImageFolderData(tmp_path, "val", image_size=8)
    for bad in (0, 10 ** 9, 1.5):
        with pytest.raises(ValueError, match="data.max_pixels"):
            ImageFolderData(tmp_path, "val", image_size=8, max_pixels=bad)


def test_index_goes_to_the_run_dir_under_hydra(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    write_classes(tmp_path / "data", {"a/0.png": good(0), "a/bad.png": b"nope"})
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(
        lambda: SimpleNamespace(runtime=SimpleNamespace(output_dir=str(tmp_path / "run")))))
    ImageFolderData(tmp_path / "data", "train", image_size=8)
    index = json.loads((tmp_path / "run" / "data_index_train.json").read_text())
    assert index["unreadable"] == 1 and index["dropped"][0]["path"].endswith("bad.png")
