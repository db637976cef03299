"""Device labels: a QR code with the printed device id, as PNG, SVG and terminal text.

The QR carries ``AUXILIO:<printed id>`` and nothing else: no case reference, no
programme name, no kind. A bracelet is worn, lost and found; a label that said
"Pulsera Rosa" or a case number would tell whoever reads it who the wearer is.
The C4 looks the id up in the registry; the check character (SPEC §2) catches a
mistyped one. The payload uses only QR's alphanumeric set (digits, A-Z, ':' and
'-'), which keeps the symbol at version 1 or 2 and readable from a small label.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from auxilio.errors import UsageError
from auxilio.protocol import FrameError, codec

PAYLOAD_PREFIX = "AUXILIO:"
# Error correction "M" (15 %): survives a scratched or partly peeled label.
ERROR_LEVEL = "m"
# PNG for a 300 dpi label printer: 8 px modules = 0.68 mm, about 18 mm wide for version 2.
PNG_SCALE = 8
# Quiet zone in modules (ISO/IEC 18004 asks for 4).
BORDER = 4
# The printed id under the code, for staff who type it: font size in PNG pixels.
CAPTION_PX = 40


@dataclass(frozen=True)
class LabelFiles:
    png: Path
    svg: Path
    payload: str


def payload(device: int | str) -> str:
    """The QR payload for a device (printed id in canonical form)."""
    try:
        return PAYLOAD_PREFIX + codec.device_str(codec.device_int(device))
    except FrameError as exc:
        raise UsageError(f"bad device id {device!r}: {exc}") from None


def device_from_payload(text: str) -> int:
    """The device id a scanned label names (raises UsageError for anything else)."""
    if not text.startswith(PAYLOAD_PREFIX):
        raise UsageError("not an Auxilio label")
    try:
        return codec.device_int(text[len(PAYLOAD_PREFIX) :])
    except FrameError as exc:
        raise UsageError(f"bad device id on the label: {exc}") from None


def _qr(device: int | str):  # noqa: ANN202 - segno.QRCode (untyped library)
    import segno

    # micro=False: Micro QR would be smaller, but most phone and handheld scanners
    # do not read it.
    return segno.make(payload(device), error=ERROR_LEVEL, micro=False, boost_error=True)


def terminal(device: int | str) -> str:
    """The QR as block characters, for a terminal (two modules per character row)."""
    buf = io.StringIO()
    _qr(device).terminal(out=buf, compact=True, border=2)
    return buf.getvalue()


def write(device: int | str, directory: str | Path) -> LabelFiles:
    """Write <id>.png and <id>.svg (QR + the printed id beneath) into `directory`."""
    from PIL import Image, ImageDraw, ImageFont

    qr = _qr(device)
    text = payload(device)[len(PAYLOAD_PREFIX) :]
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create label directory {out}: {exc.strerror}") from None
    png, svg = out / f"{text}.png", out / f"{text}.svg"

    code = io.BytesIO()
    qr.save(code, kind="png", scale=PNG_SCALE, border=BORDER)
    code.seek(0)
    img = Image.open(code).convert("L")
    font = ImageFont.load_default(size=CAPTION_PX)
    pad = CAPTION_PX // 2
    label = Image.new("L", (img.width, img.height + CAPTION_PX + pad), 255)
    label.paste(img, (0, 0))
    draw = ImageDraw.Draw(label)
    width = draw.textlength(text, font=font)
    draw.text(((img.width - width) / 2, img.height - pad // 2), text, fill=0, font=font)
    try:
        label.save(png, format="PNG", dpi=(300, 300))
        svg.write_text(_svg(qr, text), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the label into {out}: {exc.strerror}") from None
    return LabelFiles(png, svg, payload(device))


def _svg(qr, text: str) -> str:  # noqa: ANN001 - segno.QRCode
    """segno's SVG of the code with the printed id added as text below it."""
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=1, border=BORDER, xmldecl=False, svgns=True, unit="mm")
    doc = buf.getvalue().decode()
    w, h = qr.symbol_size(scale=1, border=BORDER)
    caption = 5  # mm of height for the id line
    doc = doc.replace(f'height="{h}mm"', f'height="{h + caption}mm"', 1)
    doc = doc.replace(f'viewBox="0 0 {w} {h}"', f'viewBox="0 0 {w} {h + caption}"', 1)
    text_el = (
        f'<text x="{w / 2}" y="{h + caption - 1.5}" text-anchor="middle" '
        f'font-family="DejaVu Sans Mono, monospace" font-size="4">{text}</text>'
    )
    return doc.replace("</svg>", text_el + "</svg>")
