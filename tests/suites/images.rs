//! Images and files a run returns, against the real engine, with the
//! attacks: active content under `out/` is served inert, PNGs written
//! straight into the images directory (past `display()`) are checked on the
//! host, and `display()` never lets a bad image stop the run.

use crate::util::{Shared, assert_next_call_works};
use mcp_code_exec::principals::Principal;
use mcp_code_exec::report::RunStatus;

static SERVICE: Shared = Shared::new();

/// Python that builds PNGs chunk by chunk (the standard library only, so it
/// runs on any image): `png(w, h, before, idat, after)` is an 8-bit
/// grayscale image, `zeros(n)` a zlib stream of `n` zero bytes made without
/// holding them, `cut(n)` one that stops after `n` zero bytes, unended.
const CRAFT: &str = r#"
import os, struct, zlib
SIGNATURE = b"\x89PNG\r\n\x1a\n"
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
def zeros(n, step=1 << 20):
    c = zlib.compressobj(9)
    out = [c.compress(bytes(min(step, n - at))) for at in range(0, n, step)]
    return b"".join(out) + c.flush()
def cut(n):
    c = zlib.compressobj()
    return c.compress(bytes(n)) + c.flush(zlib.Z_SYNC_FLUSH)  # the data stops mid-stream
def png(w, h, before=(), idat=None, after=()):
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    idat = zeros((w + 1) * h) if idat is None else idat
    return (SIGNATURE + header + b"".join(before) + chunk(b"IDAT", idat) + b"".join(after)
            + chunk(b"IEND", b""))
"#;

engine_test! {
    /// HTML and SVG with script come back as `text/plain`, inline and as
    /// artifacts: a client that renders resources shows their source.
    fn active_content_comes_back_as_plain_text() {
        let code = r#"
import os
os.makedirs("/workspace/out", exist_ok=True)
open("/workspace/out/x.html", "w").write("<script>alert(1)</script>")
open("/workspace/out/x.svg", "w").write("<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>")
"#;
        let report = SERVICE.run(code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(report.files.len(), 2, "{report:#?}");
        for file in &report.files {
            assert_eq!(file.mime_type, "text/plain", "{file:#?}");
            assert!(file.inline, "{file:#?}");
            assert!(file.text.as_deref().unwrap().contains("<script>"));
            let kept = SERVICE.get().artifacts().get(&Principal::local(), file.uri.as_deref().unwrap()).unwrap();
            assert_eq!(kept.mime_type, "text/plain");
        }
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    /// PNGs user code writes straight into `/run/code/images` skip
    /// `display()`: the host checks each. Decompression bombs in zTXt or
    /// iCCP and an animation's frames are stripped (never inflated); a
    /// header that lies, a file cut short, pixel data that inflates past its
    /// header are dropped with a note saying why; what is not a PNG at all
    /// the agent drops.
    fn crafted_pngs_in_the_images_directory_are_checked_on_the_host() {
        let code = format!(
            "{CRAFT}{}",
            r#"
bomb = zeros(64 << 20)
frames = [chunk(b"acTL", struct.pack(">II", 100, 0))]
control = lambda seq: chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, 64, 64, 0, 0, 1, 10, 0, 0))
apng_after = []
for i in range(1, 100):
    apng_after += [control(2 * i - 1), chunk(b"fdAT", struct.pack(">I", 2 * i) + zeros(65 * 64))]
valid = png(64, 64)
images = {
    "00-valid": valid,
    "01-ztxt-bomb": png(64, 64, before=[chunk(b"zTXt", b"Comment\0\0" + bomb)]),
    "02-iccp-bomb": png(64, 64, before=[chunk(b"iCCP", b"icc\0\0" + bomb)]),
    "03-apng": png(64, 64, before=frames + [control(0)], after=apng_after),
    "04-lying-header": png(800, 600, idat=zeros(11 * 10)),
    "05-truncated": valid[:-30],
    "06-idat-bomb": png(64, 64, idat=zeros(64 << 20)),
    "07-not-a-png": b"GIF89a" + os.urandom(100),
}
os.makedirs("/run/code/images", exist_ok=True)
for name, data in images.items():
    open(f"/run/code/images/{name}.png", "wb").write(data)
print({name: len(data) for name, data in images.items()})
"#
        );
        let report = SERVICE.run(&code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        let sizes: Vec<_> = report.images.iter().map(|i| (i.width, i.height)).collect();
        assert_eq!(sizes, [(64, 64); 4], "{:#?}", report.notes);
        for image in &report.images {
            for chunk in [&b"zTXt"[..], b"iCCP", b"acTL", b"fcTL", b"fdAT"] {
                assert!(
                    !image.data.windows(4).any(|w| w == chunk),
                    "image {} still has {}",
                    image.index,
                    String::from_utf8_lossy(chunk)
                );
            }
            assert!(image.data.len() < 1000, "only a 64x64 image of zeros is left");
        }
        let notes = report.notes.join("\n");
        for expected in [
            "image 5 of 7 dropped: its image data is shorter than its header's 800x600 pixels",
            "image 6 of 7 dropped: it is cut short",
            "image 7 of 7 dropped: its image data is longer than its header's 64x64 pixels",
            "1 image files were not PNGs within the bounds: dropped",
        ] {
            assert!(notes.contains(expected), "{expected:?} not in\n{notes}");
        }
        assert_next_call_works(SERVICE.get());
    }
}

engine_test! {
    /// `display()` of a decompression bomb, of a header that lies about its
    /// size and of random bytes behind a PNG signature drops each with a
    /// note, and the run goes on to its next line.
    fn display_drops_bad_images_and_the_run_goes_on() {
        let code = format!(
            "{CRAFT}{}",
            r#"
class Wrapped:
    def __init__(self, data):
        self.data = data
    def _repr_png_(self):
        return self.data
display(Wrapped(png(100_000, 100_000, idat=zeros(1000))))
print("after the bomb")
display(Wrapped(png(2000, 2000, idat=cut(2001 * 10))))
print("after the lying header")
display(Wrapped(SIGNATURE + os.urandom(600_000)))
print("next")
"#
        );
        let report = SERVICE.run(&code);
        assert_eq!(report.status, RunStatus::Success, "{report:#?}");
        assert_eq!(
            report.stdout,
            "after the bomb\nafter the lying header\nnext\n",
            "{report:#?}"
        );
        assert!(report.images.is_empty(), "{report:#?}");
        let notes = report.notes.join("\n");
        assert_eq!(
            notes.matches("an image (Wrapped) could not be made").count(),
            3,
            "{notes}"
        );
        assert!(notes.contains("100000x100000 pixels"), "{notes}");
        assert_next_call_works(SERVICE.get());
    }
}
