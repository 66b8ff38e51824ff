#!/usr/bin/env python3
"""Draws the extension's icons (extension/icons/icon-{16,32,48,128}.png) with
nothing but the standard library: a rounded blue square with three white dots
joined by lines, peers sharing a file. Run it again after changing the drawing;
the PNGs are committed."""
import math
import struct
import sys
import zlib
from pathlib import Path

BLUE = (37, 99, 235)
WHITE = (255, 255, 255)


def coverage(x, y, size, shape):
    """Fraction of pixel (x, y) inside `shape` (4x4 supersampling)."""
    n = 4
    inside = 0
    for i in range(n):
        for j in range(n):
            if shape((x + (i + 0.5) / n) / size, (y + (j + 0.5) / n) / size):
                inside += 1
    return inside / (n * n)


def rounded_square(u, v, r=0.22):
    cx = min(max(u, r), 1 - r)
    cy = min(max(v, r), 1 - r)
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


DOTS = [(0.30, 0.68), (0.70, 0.68), (0.50, 0.32)]


def near_segment(u, v, a, b, w):
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((u - ax) * dx + (v - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(u - (ax + t * dx), v - (ay + t * dy)) <= w


def mark(u, v):
    if any(math.hypot(u - x, v - y) <= 0.12 for x, y in DOTS):
        return True
    return any(
        near_segment(u, v, DOTS[i], DOTS[(i + 1) % 3], 0.04) for i in range(3)
    )


def png(size):
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            bg = coverage(x, y, size, rounded_square)
            fg = coverage(x, y, size, mark)
            rgb = [round(BLUE[k] * (1 - fg) + WHITE[k] * fg) for k in range(3)]
            row += bytes(rgb + [round(255 * bg)])
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "extension/icons")
    out.mkdir(parents=True, exist_ok=True)
    for size in (16, 32, 48, 128):
        (out / f"icon-{size}.png").write_bytes(png(size))


if __name__ == "__main__":
    main()
