"""Issue 11 §3 labels: the QR decodes (from the PNG, with zxing-cpp) to the printed id and
nothing else, and the SVG carries the same symbol."""

from __future__ import annotations

from pathlib import Path

import pytest
from auxilio.errors import UsageError
from auxilio.protocol import codec
from auxilio.provision import label
from PIL import Image

zxingcpp = pytest.importorskip("zxingcpp")


def _decode(png: Path) -> list[str]:
    return [r.text for r in zxingcpp.read_barcodes(Image.open(png))]


@pytest.mark.parametrize("device", [0x0938_0001, 0, 0xFFFF_FFFF])
def test_png_label_decodes_to_the_printed_id_only(tmp_path: Path, device: int) -> None:
    files = label.write(device, tmp_path / "labels")
    printed = codec.device_str(device)
    assert files.png.name == f"{printed}.png" and files.svg.name == f"{printed}.svg"
    assert _decode(files.png) == [f"AUXILIO:{printed}"]
    assert label.device_from_payload(_decode(files.png)[0]) == device
    svg = files.svg.read_text()
    assert svg.startswith("<svg") and f">{printed}</text>" in svg


def _rasterise_segno_svg(svg: str, scale: int = 8) -> Image.Image:
    """Draw the modules of segno's one-path SVG ('M x y', 'm dx dy', 'h n'; each line one
    module tall, centred on y) into a bitmap, so the SVG itself can be decoded."""
    import re
    from xml.etree import ElementTree

    from PIL import ImageDraw

    root = ElementTree.fromstring(svg)
    w, h = (float(v) for v in root.attrib["viewBox"].split()[2:])
    path = next(e for e in root.iter() if e.tag.endswith("path")).attrib["d"]
    img = Image.new("L", (int(w * scale), int(h * scale)), 255)
    draw = ImageDraw.Draw(img)
    x = y = 0.0
    for cmd, args in re.findall(r"([MmHh])([^MmHh]*)", path):
        nums = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", args)]
        if cmd == "M":
            x, y = nums
        elif cmd == "m":
            x, y = x + nums[0], y + nums[1]
        else:
            n = nums[0] if cmd == "h" else nums[0] - x
            x0, x1 = sorted((x, x + n))
            draw.rectangle(
                [x0 * scale, (y - 0.5) * scale, x1 * scale - 1, (y + 0.5) * scale - 1], fill=0
            )
            x += n
    return img


def test_svg_label_decodes_to_the_same_payload(tmp_path: Path) -> None:
    files = label.write("0938-NKRT", tmp_path)
    img = _rasterise_segno_svg(files.svg.read_text())
    assert [r.text for r in zxingcpp.read_barcodes(img)] == [files.payload]
    assert files.payload == "AUXILIO:0938-NKRT"


def test_terminal_rendering_is_blocks() -> None:
    text = label.terminal(0x0938_0001)
    lines = text.splitlines()
    assert len(lines) > 10 and set("".join(lines)) <= set("█▀▄ ")


def test_bad_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        label.write("0938-NKRX", tmp_path)  # wrong check character
    with pytest.raises(UsageError):
        label.device_from_payload("https://example.org/")
    with pytest.raises(UsageError):
        label.device_from_payload("AUXILIO:0938-NKRX")
