"""The effective receptive field's mass map as terminal text and as a small grayscale PNG (no matplotlib)."""

from __future__ import annotations

import math
import struct
import zlib

SHADES = " ░▒▓█"
Mass = tuple[tuple[float, ...], ...]


def erf_heatmap(mass: Mass, columns: int = 32) -> list[str]:
    """The mass map as text, ``columns`` characters wide, keeping the input's aspect ratio.

    Each cell is a block of input pixels drawn as two characters (a terminal character is about twice as tall
    as it is wide, so a cell looks square). Shade = sqrt(block mass / largest block mass) on " ░▒▓█", so the
    faint tails stay visible.
    """
    height, width = len(mass), len(mass[0]) if mass else 0
    if not height or not width:
        return []
    cells_across = max(1, min(columns // 2, width))
    cells_down = max(1, min(height, round(cells_across * height / width)))
    row_edges = [round(i * height / cells_down) for i in range(cells_down + 1)]
    column_edges = [round(j * width / cells_across) for j in range(cells_across + 1)]
    blocks = [
        [sum(sum(mass[y][column_edges[j]:column_edges[j + 1]]) for y in range(row_edges[i], row_edges[i + 1]))
         for j in range(cells_across)]
        for i in range(cells_down)
    ]
    peak = max(max(row) for row in blocks) or 1.0
    top = len(SHADES) - 1
    return ["".join(2 * SHADES[min(top, round(math.sqrt(value / peak) * top))] for value in row) for row in blocks]


def png_bytes(mass: Mass) -> bytes:
    """An 8-bit grayscale PNG of the mass map (sqrt scale, white = most mass), written with zlib and struct only."""
    height, width = len(mass), len(mass[0])
    peak = max(max(row) for row in mass) or 1.0
    raw = b"".join(
        b"\x00" + bytes(min(255, round(255 * math.sqrt(value / peak))) for value in row) for row in mass
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, grayscale, deflate, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


__all__ = ["SHADES", "erf_heatmap", "png_bytes"]
