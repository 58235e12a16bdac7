//! Opening a path beneath a root folder so that nothing inside the root can
//! make the open leave it.
//!
//! Owns the one rule every host file access follows: a path is plain
//! components (no `..`, `.`, empty part, NUL), resolved from a directory fd
//! of the root without following any symbolic link, magic link or `..`.
//! With the kernel's `openat2` (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS`) that is one call; where it is missing (ENOSYS:
//! kernels before 5.6, macOS) a walk opens one component at a time with
//! `O_NOFOLLOW`, each from the directory fd the step before opened. Both
//! end the same way: an fd of what is beneath the root, or an error; a
//! symbolic link as the last component comes back as an `O_PATH` fd of the
//! link itself (the caller sees its type and refuses it). It reads and
//! writes nothing itself; [`super`] decides what to open and why.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How paths are resolved beneath a root (a setting of the configuration).
pub use crate::config::HostResolution as Method;

/// A path's components, checked to be plain; `None` for one that is not
/// (absolute, `..`, `.`, an empty part, NUL, a part over 255 bytes).
pub fn plain_components(path: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = path.split('/').collect();
    let plain = !path.is_empty()
        && !path.contains('\0')
        && parts
            .iter()
            .all(|part| !matches!(*part, "" | "." | "..") && part.len() <= 255);
    plain.then_some(parts)
}

/// Opens `parts` beneath `root` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC`
/// are always added): the last component must not be a symbolic link
/// unless `flags` has `O_PATH` (then the link itself is opened); no
/// earlier one may be. `parts` empty opens the root again.
pub fn open_beneath(
    method: Method,
    root: BorrowedFd<'_>,
    parts: &[&str],
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if parts.iter().any(|part| matches!(*part, "" | "." | "..")) {
        // The kernel would refuse `..` too (EXDEV); the walk never sees one.
        return Err(Errno::XDEV);
    }
    if method == Method::Kernel && kernel_has_openat2() {
        let path = if parts.is_empty() {
            ".".to_owned()
        } else {
            parts.join("/")
        };
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(root, path.as_str(), flags, mode, resolve) {
            Err(Errno::NOSYS) => mark_openat2_missing(),
            // A race with a rename under the root: the kernel says try again.
            Err(Errno::AGAIN) => {}
            done => return done,
        }
    }
    walk(root, parts, flags, mode)
}

/// One component at a time, each opened `O_NOFOLLOW` from the fd of the one
/// before: a symbolic link anywhere but at the end fails (`ENOTDIR` or
/// `ELOOP`), at the end it fails unless `O_PATH` asks for the link itself.
fn walk(
    root: BorrowedFd<'_>,
    parts: &[&str],
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let step = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Some((last, dirs)) = parts.split_last() else {
        return rustix::fs::openat(root, ".", flags, mode);
    };
    let mut held: Option<OwnedFd> = None;
    for part in dirs {
        let at = held.as_ref().map_or(root, AsFd::as_fd);
        held = Some(rustix::fs::openat(at, *part, step, Mode::empty())?);
    }
    let at = held.as_ref().map_or(root, AsFd::as_fd);
    rustix::fs::openat(at, *last, flags, mode)
}

static OPENAT2_MISSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn kernel_has_openat2() -> bool {
    !OPENAT2_MISSING.load(std::sync::atomic::Ordering::Relaxed)
}

fn mark_openat2_missing() {
    if !OPENAT2_MISSING.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!("the kernel has no openat2: host files are resolved a component at a time");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn dir_fd(path: &std::path::Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    fn open(method: Method, root: &OwnedFd, path: &str) -> rustix::io::Result<OwnedFd> {
        let parts: Vec<&str> = path.split('/').collect();
        open_beneath(method, root.as_fd(), &parts, OFlags::RDONLY, Mode::empty())
    }

    /// A root holding a file, a folder and every kind of escape, and a
    /// secret outside it.
    fn tree() -> (tempdir::Dir, OwnedFd) {
        let dir = tempdir::Dir::new();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub/deep")).unwrap();
        std::fs::write(root.join("sub/deep/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        symlink(dir.path().join("secret"), root.join("out")).unwrap();
        symlink("../secret", root.join("up")).unwrap();
        symlink(dir.path(), root.join("outdir")).unwrap();
        symlink("sub", root.join("inside")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("/proc/self/root/etc/passwd", root.join("magic")).unwrap();
        let fd = dir_fd(&root);
        (dir, fd)
    }

    fn refuses_every_escape(method: Method) {
        let (_dir, root) = tree();
        let read = |path| open(method, &root, path).map(std::fs::File::from);
        let mut text = String::new();
        use std::io::Read;
        read("sub/deep/a.txt")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "a");
        for escape in [
            "out",
            "up",
            "outdir/secret",
            "inside/deep/a.txt",
            "loop",
            "magic",
            "../secret",
            "sub/../../secret",
            "sub/./deep/a.txt",
        ] {
            let error = read(escape).expect_err(escape);
            assert!(
                [Errno::LOOP, Errno::XDEV, Errno::NOTDIR].contains(&error),
                "{method:?} {escape}: {error}"
            );
        }
        // A link at the end, asked for as a path, is the link itself.
        let link =
            open_beneath(method, root.as_fd(), &["out"], OFlags::PATH, Mode::empty()).unwrap();
        let stat = rustix::fs::fstat(&link).unwrap();
        assert_eq!(
            rustix::fs::FileType::from_raw_mode(stat.st_mode),
            rustix::fs::FileType::Symlink
        );
    }

    #[test]
    fn the_kernel_path_refuses_every_escape() {
        refuses_every_escape(Method::Kernel);
        assert!(kernel_has_openat2(), "this kernel has openat2: it was used");
    }

    #[test]
    fn the_walk_refuses_every_escape() {
        refuses_every_escape(Method::Walk);
    }

    #[test]
    fn plain_paths_only() {
        assert_eq!(plain_components("a/b.csv"), Some(vec!["a", "b.csv"]));
        for bad in ["", "/etc", "a/../b", "./a", "a//b", "a/", "a\0b"] {
            assert_eq!(plain_components(bad), None, "{bad:?}");
        }
        assert_eq!(plain_components(&"n".repeat(256)), None);
    }

    /// A temporary directory removed at drop (no crate for it).
    pub mod tempdir {
        pub struct Dir(std::path::PathBuf);

        impl Dir {
            pub fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!(
                    "mcp-code-exec-hostfiles-{}-{n}",
                    std::process::id()
                ));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir_all(&path).unwrap();
                Self(path)
            }

            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
