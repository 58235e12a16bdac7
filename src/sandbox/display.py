# mcp-code-exec: images a run returns, as sandboxed code makes them.
#
# The agent compiles this once at startup (it arrives as an argument, no files
# are mounted) and each run's process calls `install(options)` before the code
# and `finish()` after it. `display(obj)` is a built-in: a PIL image, a
# matplotlib figure, or anything with `_repr_png_` becomes a PNG image of the
# run; anything else is printed, as IPython's display prints what it cannot
# draw. matplotlib's backend is this module's (`module://mcp_code_exec_display`,
# Agg underneath): `plt.show()` displays every open figure and closes it, and
# figures still open when the run ends are displayed then.
#
# Each image is bounded here, in the run's own process and memory: scaled down
# to `max_pixels` on its longest side, re-encoded smaller when over
# `max_bytes` (dropped with a note when it cannot fit), at most `max_images`
# per run (the rest counted). An image that cannot be made (a decompression
# bomb, a header that lies, bytes that are no image, a `_repr_png_` that
# raises) is dropped with a note: display() never raises for it, and the run
# goes on. The PNGs are files in the directory the agent names, in the order
# they were made; the agent reads them after the run and bounds them again
# (signature, size, pixels, count), and the host reads each strictly.
#
# matplotlib is pointed at this backend when it is imported (an import hook:
# no MPLBACKEND in the environment, so subprocesses and spawned workers,
# which lack the hook, keep the image's own backend).

import builtins
import importlib.machinery
import importlib.util
import io
import os
import sys

BACKEND = "mcp_code_exec_display"
MIN_SIDE = 64  # smaller than this, an image says nothing: drop it instead
MAX_DECODE_PIXELS = 1 << 24  # PNG bytes with more are not decoded to be scaled (64 MiB as RGBA)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Display:
    """The run's images: rendered, bounded, written in order."""

    def __init__(self, directory, max_pixels, max_bytes, max_images):
        self.directory = directory
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.max_images = max_images
        self.written = 0
        self.dropped = 0
        self.notes = []

    def __call__(self, *objects):
        """display(obj, ...): each object as an image of the run, or printed.
        An image that cannot be made is dropped with a note, never raised."""
        for obj in objects:
            what = type(obj).__name__
            try:
                png = self.render(obj)
            except Exception as exc:  # a bad image must not end the run (issue 24)
                self.drop(f"an image ({what}) could not be made: {_described(exc)}: dropped")
                continue
            if png is None:
                print(repr(obj))
            else:
                self.keep(png, what)

    def render(self, obj):
        """PNG bytes for an image-like object, None for anything else."""
        figure = _figure_of(obj)
        if figure is not None:
            return self.render_figure(figure)
        if _is_pil_image(obj):
            return self.encode(obj)
        repr_png = getattr(obj, "_repr_png_", None)
        if callable(repr_png):
            data = repr_png()
            if isinstance(data, bytes) and data.startswith(PNG_SIGNATURE):
                return self.bounded_png(data)
        return None

    def render_figure(self, figure):
        width, height = figure.get_size_inches() * figure.dpi
        scale = min(1.0, self.max_pixels / max(width, height, 1))
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=figure.dpi * scale)
        return self.bounded_png(buffer.getvalue())

    def bounded_png(self, data):
        """PNG bytes from elsewhere: re-encoded through PIL when too large, if it is there."""
        width, height = _png_size(data)
        if len(data) <= self.max_bytes and max(width, height) <= self.max_pixels:
            return data
        if width * height > MAX_DECODE_PIXELS:
            raise ValueError(f"{width}x{height} pixels, over {MAX_DECODE_PIXELS} to decode")
        try:
            from PIL import Image
        except ImportError:
            return data  # the agent drops what is still over the bounds, with a note
        return self.encode(Image.open(io.BytesIO(data)))

    def encode(self, image):
        """A PIL image as PNG within the bounds: scaled down to max_pixels,
        then smaller (a 256-color palette, then 3/4 the size) until it fits."""
        image = image.copy()
        if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            image = image.convert("RGBA")
        if max(image.size) > self.max_pixels:
            image.thumbnail((self.max_pixels, self.max_pixels))
        data = _png(image)
        if len(data) > self.max_bytes and image.mode != "P":
            image = image.convert("RGBA").quantize(colors=256)
            data = _png(image)
        while len(data) > self.max_bytes and min(image.size) * 3 // 4 >= MIN_SIDE:
            image = image.resize((image.size[0] * 3 // 4, image.size[1] * 3 // 4))
            data = _png(image)
        return data

    def keep(self, png, what):
        if len(png) > self.max_bytes:
            self.drop(f"an image ({what}) was over {self.max_bytes} bytes even when made smaller: dropped")
            return
        if self.written >= self.max_images:
            self.dropped += 1
            return
        os.makedirs(self.directory, exist_ok=True)
        with open(f"{self.directory}/{self.written:04d}.png", "wb") as f:
            f.write(png)
        self.written += 1

    def drop(self, note):
        self.dropped += 1
        self.notes.append(note)

    def show_figures(self):
        """plt.show(): every open figure, in order, then closed."""
        from matplotlib import pyplot
        from matplotlib._pylab_helpers import Gcf

        for manager in Gcf.get_all_fig_managers():
            self.keep(self.render_figure(manager.canvas.figure), "figure")
        pyplot.close("all")


def _figure_of(obj):
    if "matplotlib" not in sys.modules:
        return None
    from matplotlib.figure import Figure

    if isinstance(obj, Figure):
        return obj
    figure = getattr(obj, "figure", None)  # an Axes
    return figure if isinstance(figure, Figure) else None


def _is_pil_image(obj):
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(obj, image.Image)


def _described(exc, limit=200):
    """An exception as one short line for a note."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _png_size(data):
    """(width, height) from a PNG's header; (0, 0) when it is not one."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE):
        return 0, 0
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


class _Backend:
    """An import hook: `mcp_code_exec_display` is matplotlib's backend module
    (Agg's canvas, and a show() that displays the figures; matplotlib copies
    the module's names when it loads a backend, so they exist on import), and
    `matplotlib` itself selects it as soon as it is imported."""

    display = None  # the run's Display, set by install()
    _finding = False

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == BACKEND:
            return importlib.machinery.ModuleSpec(name, cls)
        if name != "matplotlib" or cls._finding:
            return None
        cls._finding = True  # the real spec, from the finders after this one
        try:
            spec = importlib.util.find_spec(name)
        finally:
            cls._finding = False
        if spec is not None and spec.loader is not None:
            spec.loader = _SelectingLoader(spec.loader)
        return spec

    @staticmethod
    def create_module(spec):
        return None

    @classmethod
    def exec_module(cls, module):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        module.FigureCanvas = FigureCanvasAgg

        def show(*args, **kwargs):
            if cls.display is not None:
                cls.display.show_figures()

        module.show = show


class _SelectingLoader:
    """matplotlib's own loader, then `matplotlib.use(our backend)`."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.use(f"module://{BACKEND}")

    def __getattr__(self, name):  # get_resource_reader, is_package, ...
        return getattr(self.loader, name)


def register_backend():
    """Points matplotlib at this module's backend (before it is imported)."""
    if _Backend not in sys.meta_path:
        sys.meta_path.insert(0, _Backend)


def install(options):
    """Before the run's code: the `display` built-in, bound to this run."""
    display = Display(options["directory"], options["max_pixels"], options["max_bytes"], options["max_images"])
    builtins.display = display
    _Backend.display = display
    return display


def finish(display):
    """After the run's code: figures still open are displayed. Returns what
    the agent reports: images dropped, and the notes for the text."""
    if "matplotlib.pyplot" in sys.modules:
        try:
            display.show_figures()
        except Exception as exc:  # a figure that cannot draw must not hide the run's result
            display.notes.append(f"open figures could not be drawn: {type(exc).__name__}: {exc}")
    return {"images_dropped": display.dropped, "image_notes": display.notes[:8]}
