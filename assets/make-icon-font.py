"""Builds assets/icons.ttf: a one-glyph font with the copy icon (U+1F5D0,
two overlapping pages) that the markdown code blocks' copy button uses and
egui's built-in fonts lack. Run: pip install fonttools && python3 assets/make-icon-font.py
"""
from pathlib import Path

from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen

UPM = 1000


def rect_outline(pen, x0, y0, x1, y1, w):
    """A rectangle's outline `w` units thick (outer clockwise, inner counter-clockwise)."""
    pen.moveTo((x0, y0)); pen.lineTo((x0, y1)); pen.lineTo((x1, y1)); pen.lineTo((x1, y0)); pen.closePath()
    pen.moveTo((x0 + w, y0 + w)); pen.lineTo((x1 - w, y0 + w)); pen.lineTo((x1 - w, y1 - w)); pen.lineTo((x0 + w, y1 - w)); pen.closePath()


def copy_glyph():
    pen = TTGlyphPen(None)
    # The back page: only its visible L-shaped edges, so the front page does not overlap it.
    w = 80
    pen.moveTo((100, 250)); pen.lineTo((100, 850)); pen.lineTo((600, 850)); pen.lineTo((600, 750))
    pen.lineTo((180, 750)); pen.lineTo((180, 250)); pen.closePath()
    rect_outline(pen, 300, 50, 800, 650, w)
    return pen.glyph()


def empty():
    return TTGlyphPen(None).glyph()


fb = FontBuilder(UPM, isTTF=True)
order = [".notdef", "copy"]
fb.setupGlyphOrder(order)
fb.setupCharacterMap({0x1F5D0: "copy"})
fb.setupGlyf({".notdef": empty(), "copy": copy_glyph()})
fb.setupHorizontalMetrics({".notdef": (500, 0), "copy": (900, 50)})
fb.setupHorizontalHeader(ascent=900, descent=-100)
fb.setupNameTable({"familyName": "Spillway Icons", "styleName": "Regular"})
fb.setupOS2(sTypoAscender=900, sTypoDescender=-100, usWinAscent=900, usWinDescent=100)
fb.setupPost()
out = Path(__file__).with_name("icons.ttf")
fb.save(str(out))
print(f"wrote {out} ({out.stat().st_size} bytes)")
