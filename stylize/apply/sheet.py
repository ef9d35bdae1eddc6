"""Contact sheets: one photo through several styles and strengths, labelled, in one image."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from stylize.apply import recipe
from stylize.errors import StylizeError
from stylize.images import _as_uint8, to_pil

LABEL_HEIGHT = 22


def _font():
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def _label(spec: str) -> str:
    """Style names as given; style images (adaptive models) by file name."""
    return ",".join(Path(p).stem if "/" in p or "." in p.partition("=")[0] else p for p in spec.split(","))


def contact_sheet(stylizer: recipe.Stylizer, photo, styles: list[str] | None = None,
                  strengths: list[float] | None = None, columns: int | None = None) -> Image.Image:
    """The photo ((3, H, W), uint8 or float in [0, 1], torch or numpy), then one tile per (style,
    strength), each through the recipe (recipe.run): rows are styles, columns strengths.

    styles: names/indices (or NAME=W mixes, given as one comma-joined entry) - all styles by default;
    strengths: default [1.0].
    """
    styles = styles or list(stylizer.styles)
    if not styles:
        raise StylizeError("an adaptive model needs style images: pass --style PAINTING.jpg (repeat for more)")
    strengths = strengths or [1.0]
    for s in strengths:
        recipe.check_strength(s, stylizer.name, stylizer.has_strength)
    photo = _as_uint8(photo)
    photo_tile = (to_pil(photo), "photo")

    def tile(look: recipe.Look, strength: float) -> Image.Image:
        return to_pil(recipe.run(stylizer, photo, look, strength))

    if len(strengths) == 1:  # one row: the photo, then every style
        rows = [[photo_tile] + [(tile(stylizer.condition(spec.split(",")), strengths[0]), _label(spec))
                                for spec in styles]]
        if columns:
            flat = rows[0]
            rows = [flat[i:i + columns] for i in range(0, len(flat), columns)]
    else:  # a row per style: the photo (first row only), then the style at each strength
        rows = []
        for r, spec in enumerate(styles):
            look = stylizer.condition(spec.split(","))
            rows.append([photo_tile if r == 0 else None] +
                        [(tile(look, s), f"{_label(spec)} @ {s:g}") for s in strengths])
    return tile_grid(rows)


def tile_grid(rows: list[list[tuple[Image.Image, str] | None]]) -> Image.Image:
    """Labelled tiles in rows (None: an empty cell), each cell the size of the first tile."""
    w, h = next(t for r in rows for t in r if t is not None)[0].size
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (cols * w, len(rows) * (h + LABEL_HEIGHT)), "white")
    draw, font = ImageDraw.Draw(sheet), _font()
    for j, row in enumerate(rows):
        for i, tile in enumerate(row):
            if tile is None:
                continue
            x, y = i * w, j * (h + LABEL_HEIGHT)
            sheet.paste(tile[0].resize((w, h), Image.Resampling.LANCZOS) if tile[0].size != (w, h) else tile[0],
                        (x, y + LABEL_HEIGHT))
            draw.text((x + 4, y + 3), tile[1], fill="black", font=font)
    return sheet
