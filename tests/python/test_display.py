"""display.py without a container: images bounded in pixels, bytes and
count, figures through the matplotlib backend, everything else printed."""

import io
import os
import struct
import subprocess
import sys
import zlib

import pytest
from PIL import Image


@pytest.fixture
def display(mcp_display, tmp_path):
    return mcp_display.Display(str(tmp_path), max_pixels=100, max_bytes=20_000, max_images=2)


def written(tmp_path):
    return [Image.open(tmp_path / name) for name in sorted(os.listdir(tmp_path))]


def test_pil_images_are_scaled_to_the_pixel_bound(display, tmp_path):
    display(Image.new("RGB", (400, 200), "red"))
    (image,) = written(tmp_path)
    assert image.size == (100, 50)


def test_at_most_max_images_the_rest_counted(display, tmp_path):
    for _ in range(5):
        display(Image.new("L", (10, 10)))
    assert len(written(tmp_path)) == 2
    assert display.dropped == 3


def test_too_many_bytes_are_reencoded_smaller(mcp_display, tmp_path):
    noise = Image.frombytes("RGB", (300, 300), os.urandom(300 * 300 * 3))
    small = mcp_display.Display(str(tmp_path), max_pixels=300, max_bytes=60_000, max_images=8)
    small(noise)
    (image,) = written(tmp_path)
    assert (tmp_path / "0000.png").stat().st_size <= 60_000
    assert image.size[0] < 300, "palette alone could not fit random noise: it was made smaller"
    tiny = mcp_display.Display(str(tmp_path / "tiny"), max_pixels=300, max_bytes=100, max_images=8)
    tiny(noise)
    assert tiny.dropped == 1 and "dropped" in tiny.notes[0]


def test_other_objects_are_printed(display, capsys, tmp_path):
    display({"a": 1}, "text")
    assert capsys.readouterr().out == "{'a': 1}\n'text'\n"
    assert written(tmp_path) == []


def test_objects_with_a_png_repr_are_displayed(display, tmp_path):
    class Chart:
        def _repr_png_(self):
            buffer = io.BytesIO()
            Image.new("RGB", (300, 30)).save(buffer, format="PNG")
            return buffer.getvalue()

    display(Chart())
    (image,) = written(tmp_path)
    assert image.size == (100, 10)


def test_show_and_figures_left_open_become_images(mcp_display, tmp_path):
    # In a process of its own: the backend is chosen once per process.
    script = f"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("display", {mcp_display.__file__!r})
display = importlib.util.module_from_spec(spec)
spec.loader.exec_module(display)
display.register_backend()
shown = display.install({{"directory": {str(tmp_path)!r}, "max_pixels": 320, "max_bytes": 1 << 20, "max_images": 8}})
import matplotlib.pyplot as plt
plt.plot([1, 2, 3])
plt.show()
plt.figure(figsize=(2, 1), dpi=100)
plt.plot([3, 2, 1])
print(plt.get_backend(), plt.get_fignums(), display.finish(shown), plt.get_fignums())
import os, subprocess, sys
# A subprocess has no hook: it keeps matplotlib's own backend, and works.
code = "import matplotlib.pyplot as plt; plt.plot([1]); print(plt.get_backend())"
print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip().lower())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "module://mcp_code_exec_display [1] {'images_dropped': 0, 'image_notes': []} []"
    assert lines[1] == "agg", "no MPLBACKEND leaks into subprocesses"
    first, second = written(tmp_path)
    assert first.size == (320, 240), "640x480 scaled to 320 on its longest side"
    assert second.size == (200, 100)


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width, height, rows=None):
    """An 8-bit grayscale PNG whose header says width x height; its data
    stops after `rows` rows, mid-stream, when told (a header that lies)."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    stream = zlib.compressobj()
    data = stream.compress(bytes((width + 1) * (height if rows is None else rows)))
    data += stream.flush() if rows is None else stream.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", data) + chunk(b"IEND", b"")


class Wrapped:
    """What a library hands display(): PNG bytes from _repr_png_."""

    def __init__(self, data):
        self.data = data

    def _repr_png_(self):
        return self.data


BAD_IMAGES = {
    "decompression bomb": Wrapped(png(100_000, 100_000, rows=1)),
    "header that lies": Wrapped(png(2000, 2000, rows=10)),
    "random bytes": Wrapped(b"\x89PNG\r\n\x1a\n" + os.urandom(30_000)),
    "lying PIL image": Image.open(io.BytesIO(png(300, 300, rows=3))),
    "raising _repr_png_": type("Broken", (), {"_repr_png_": lambda self: 1 / 0})(),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_a_bad_image_is_dropped_with_a_note_and_never_raises(display, tmp_path, case):
    display(BAD_IMAGES[case], Image.new("L", (10, 10)))
    assert display.dropped == 1
    (note,) = display.notes
    assert note.startswith(f"an image ({type(BAD_IMAGES[case]).__name__}) could not be made: "), note
    assert note.endswith(": dropped"), note
    assert len(note) < 300, note
    assert [image.size for image in written(tmp_path)] == [(10, 10)], "the next image is still made"


def test_a_bomb_is_refused_by_its_header_before_decoding(display):
    display(BAD_IMAGES["decompression bomb"])
    assert "100000x100000 pixels" in display.notes[0], display.notes
