//! Host files: the user's own files, named by path in a call, read from the
//! folders the operator allowed and saved back to the one it allowed for
//! writing; their bytes never travel in the MCP message.
//!
//! Owns what a host path may name and how it is opened: the read roots
//! (`MCP_BRIDGE_HOST_READ`: folders, or the client's MCP roots), the write
//! root (`MCP_BRIDGE_HOST_WRITE`), the resolution beneath a root that
//! nothing inside it can escape ([`resolve`]), the bounded walk of a folder,
//! the one bounded read of each file into the frames that carry it to the
//! sandbox, and the atomic, never-following save of a run's `out/` file.
//! It does not run anything, speak MCP or know the sandbox: the call
//! ([`crate::call`]) asks it before a run (reads: a refusal is the call's
//! `validation_error`) and after (saves: a refusal is a note), and the
//! sandbox writes the frames it made.
//!
//! What is refused, always: a path outside every root (`..`, an absolute
//! path elsewhere), a symbolic link anywhere on the way (even one pointing
//! inside the root), a FIFO, device or socket (never opened for I/O: its
//! type is read from an `O_PATH` fd), a file with more than one hard link
//! (it may be a link to a file outside the root), a root that is itself a
//! symbolic link. Inside a folder these are skipped, with a note; named
//! directly they refuse the call.

pub mod resolve;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use rustix::fs::{FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use serde::Serialize;

pub use crate::sandbox::protocol::HostEntry;
use crate::sandbox::protocol::{HOST_DATA_HEADER, seal_host_data};
pub use resolve::Method;
use resolve::{open_beneath, plain_components};

/// The most bytes one host-data frame carries.
pub const CHUNK_BYTES: usize = 1 << 20;
/// How deep a folder is walked.
pub const MAX_DEPTH: usize = 32;
/// How many notes about skipped entries a call gets (the rest are counted).
const MAX_NOTES: usize = 20;

/// The host files one call reads: what lands where under `/workspace`, the
/// frames carrying the bytes, and what was skipped.
#[derive(Debug, Clone, Default)]
pub struct HostFiles {
    /// In order: a folder before what is in it; files' bytes follow in
    /// [`HostFiles::frames`] in the same order.
    pub entries: Vec<HostEntry>,
    /// The files' bytes as whole `H` frames, header included, at most
    /// [`CHUNK_BYTES`] of data each.
    pub frames: Vec<Bytes>,
    /// The files' bytes, all together.
    pub bytes: u64,
    /// Entries of folders that were skipped, and why.
    pub notes: Vec<String>,
}

/// A call's request for one host path: where it lands under `/workspace`
/// (the `files` key), and the host path (its `{"host": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRequest {
    pub dest: String,
    pub host: String,
}

/// The bounds of a call's host reads.
#[derive(Debug, Clone, Copy)]
pub struct ReadBounds {
    /// `MCP_BRIDGE_MAX_HOST_FILES_BYTES`.
    pub max_bytes: u64,
    /// `MCP_BRIDGE_MAX_HOST_FILES`: entries looked at, folders included.
    pub max_entries: usize,
}

/// A file a call saved: from the run's `out/`, to the host, with its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Saved {
    pub from: String,
    pub to: String,
    pub bytes: u64,
}

/// Where a root came from, to name in errors.
const READ_VARIABLE: &str = "MCP_BRIDGE_HOST_READ";
const WRITE_VARIABLE: &str = "MCP_BRIDGE_HOST_WRITE";

/// Reads every requested path beneath `roots`, bounded. Blocking: run it
/// off the async workers. The error names the path and the variable.
pub fn read(
    requests: &[HostRequest],
    roots: &[PathBuf],
    bounds: ReadBounds,
    method: Method,
) -> Result<HostFiles, String> {
    if roots.is_empty() {
        return Err(format!(
            "host files are not enabled: no read root ({READ_VARIABLE} names the folders \
             runs may read, or `roots` for the client's)"
        ));
    }
    let mut reader = Reader {
        files: HostFiles::default(),
        bounds,
        entries: 0,
        skipped: 0,
        method,
    };
    let opened: Vec<(&PathBuf, Result<OwnedFd, String>)> = roots
        .iter()
        .map(|root| (root, open_root(root, READ_VARIABLE)))
        .collect();
    for request in requests {
        if plain_components(&request.dest).is_none() {
            return Err(format!(
                "file path {:?} must be relative and stay inside /workspace",
                request.dest
            ));
        }
        let (root, fd, parts) = locate(&opened, &request.host, method)?;
        reader.entry(root, fd, &parts, request)?;
    }
    if reader.skipped > MAX_NOTES {
        reader.files.notes.push(format!(
            "{} more host entries skipped",
            reader.skipped - MAX_NOTES
        ));
    }
    Ok(reader.files)
}

/// Opens a root folder: a directory, its last component no symbolic link.
fn open_root(root: &Path, variable: &str) -> Result<OwnedFd, String> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::open(root, flags, Mode::empty()).map_err(|error| {
        let why = match error {
            Errno::LOOP | Errno::NOTDIR => {
                "a symbolic link or no folder (name the folder itself)".to_owned()
            }
            other => other.to_string(),
        };
        format!(
            "the root {} cannot be opened: {why} ({variable})",
            root.display()
        )
    })
}

/// The root a host path is in, its fd, and the path's components beneath it.
fn locate<'r>(
    roots: &'r [(&'r PathBuf, Result<OwnedFd, String>)],
    host: &str,
    method: Method,
) -> Result<(&'r Path, &'r OwnedFd, Vec<String>), String> {
    let refused = || {
        let list: Vec<String> = roots.iter().map(|(r, _)| r.display().to_string()).collect();
        format!(
            "host path {host:?} is outside every read root ({READ_VARIABLE}: {}): \
             no '..', '.', empty part or absolute path elsewhere",
            list.join(", ")
        )
    };
    let trimmed = host.trim_end_matches('/');
    if Path::new(trimmed).is_absolute() {
        for (root, fd) in roots {
            if let Some(rest) = beneath(root, trimmed) {
                let fd = fd
                    .as_ref()
                    .map_err(|error| format!("host path {host:?}: {error}"))?;
                return Ok((root.as_path(), fd, rest.ok_or_else(refused)?));
            }
        }
        return Err(refused());
    }
    let parts: Vec<String> = if trimmed == "." {
        Vec::new()
    } else {
        plain_components(trimmed)
            .ok_or_else(refused)?
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    // The first root that has it.
    let mut first_error = None;
    for (root, fd) in roots {
        let fd = match fd {
            Ok(fd) => fd,
            Err(error) => {
                first_error.get_or_insert_with(|| error.clone());
                continue;
            }
        };
        let names: Vec<&str> = parts.iter().map(String::as_str).collect();
        match open_beneath(method, fd.as_fd(), &names, OFlags::PATH, Mode::empty()) {
            Err(Errno::NOENT) => continue,
            _ => return Ok((root.as_path(), fd, parts)),
        }
    }
    let mut error =
        format!("host path {host:?}: no such file or folder in any read root ({READ_VARIABLE})");
    if let Some(unusable) = first_error {
        error.push_str(&format!("; and {unusable}"));
    }
    Err(error)
}

/// `path`'s plain components beneath `root` when `path` starts with it:
/// `Some(None)` when it does but the rest is not plain (`..`).
fn beneath(root: &Path, path: &str) -> Option<Option<Vec<String>>> {
    let rest = Path::new(path).strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for component in rest.components() {
        match component {
            Component::Normal(name) => match name.to_str() {
                Some(name) => parts.push(name.to_owned()),
                None => return Some(None),
            },
            _ => return Some(None),
        }
    }
    // `Path` drops `.` and doubled slashes: compare as written (a root
    // written longer than the path it matches, `/srv/out/` for `/srv/out`
    // or `/a//b` for `/a/b`, leaves nothing to compare, never a panic).
    let written = path
        .get(root.as_os_str().len()..)
        .unwrap_or("")
        .trim_start_matches('/');
    if !written.is_empty() && plain_components(written).is_none() {
        return Some(None);
    }
    Some(Some(parts))
}

struct Reader {
    files: HostFiles,
    bounds: ReadBounds,
    entries: usize,
    skipped: usize,
    method: Method,
}

/// What a directory entry is, from an `O_PATH` fd (never opened for I/O).
enum Kind {
    File { size: u64, nlink: u64 },
    Dir,
    Link,
    Other,
}

fn kind_of(fd: &OwnedFd) -> rustix::io::Result<(Kind, (u64, u64))> {
    let stat = rustix::fs::fstat(fd)?;
    let id = (stat.st_dev, stat.st_ino);
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Kind::File {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            nlink: stat.st_nlink,
        },
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Link,
        _ => Kind::Other,
    };
    Ok((kind, id))
}

impl Reader {
    /// One requested path: a file, or a folder walked.
    fn entry(
        &mut self,
        root: &Path,
        root_fd: &OwnedFd,
        parts: &[String],
        request: &HostRequest,
    ) -> Result<(), String> {
        let names: Vec<&str> = parts.iter().map(String::as_str).collect();
        let shown = root.join(parts.join("/"));
        let fail = |why: String| {
            format!(
                "host path {:?} ({}): {why} ({READ_VARIABLE})",
                request.host,
                shown.display()
            )
        };
        let fd = open_beneath(
            self.method,
            root_fd.as_fd(),
            &names,
            OFlags::PATH,
            Mode::empty(),
        )
        .map_err(|error| fail(open_error(error)))?;
        let (kind, id) = kind_of(&fd).map_err(|error| fail(error.to_string()))?;
        self.count(&request.host)?;
        match kind {
            Kind::Dir => {
                let dir = open_beneath(
                    self.method,
                    root_fd.as_fd(),
                    &names,
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    Mode::empty(),
                )
                .map_err(|error| fail(open_error(error)))?;
                self.files.entries.push(HostEntry {
                    path: request.dest.clone(),
                    size: 0,
                    dir: true,
                });
                self.walk(&dir, &request.dest, &request.host, MAX_DEPTH)
            }
            Kind::File { size, nlink } => {
                if let Some(why) = refused_file(nlink) {
                    return Err(fail(why));
                }
                self.check_size(size, &request.host)?;
                let file = open_beneath(
                    self.method,
                    root_fd.as_fd(),
                    &names,
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
                    Mode::empty(),
                )
                .map_err(|error| fail(open_error(error)))?;
                self.file(file, id, size, &request.dest)
                    .map_err(|error| fail(error.to_string()))
            }
            Kind::Link => Err(fail(
                "a symbolic link: links are not followed (name what it points to, if that \
                 is inside a read root)"
                    .into(),
            )),
            Kind::Other => Err(fail(
                "not a regular file or folder (a FIFO, device or socket): refused".into(),
            )),
        }
    }

    fn count(&mut self, host: &str) -> Result<(), String> {
        self.entries += 1;
        if self.entries > self.bounds.max_entries {
            return Err(format!(
                "host path {host:?}: more than {} files and folders together \
                 (MCP_BRIDGE_MAX_HOST_FILES)",
                self.bounds.max_entries
            ));
        }
        Ok(())
    }

    fn check_size(&self, size: u64, host: &str) -> Result<(), String> {
        let total = self.files.bytes.saturating_add(size);
        if total > self.bounds.max_bytes {
            return Err(format!(
                "host path {host:?}: the host files come to more than {} bytes \
                 (MCP_BRIDGE_MAX_HOST_FILES_BYTES)",
                self.bounds.max_bytes
            ));
        }
        Ok(())
    }

    /// A folder's entries, in name order, each opened from the folder's fd.
    fn walk(&mut self, dir: &OwnedFd, dest: &str, host: &str, depth: usize) -> Result<(), String> {
        let fail = |why: String| format!("host path {host:?}: {why} ({READ_VARIABLE})");
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir).map_err(|e| fail(e.to_string()))? {
            let entry = entry.map_err(|e| fail(e.to_string()))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            self.count(host)?;
            names.push(name.to_vec());
        }
        names.sort();
        for name in names {
            let Ok(text) = String::from_utf8(name.clone()) else {
                self.skip(
                    format!("{dest}/{}", String::from_utf8_lossy(&name)),
                    "a name not in UTF-8",
                );
                continue;
            };
            let path = format!("{dest}/{text}");
            let at = OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = match rustix::fs::openat(dir, text.as_str(), OFlags::PATH | at, Mode::empty())
            {
                Ok(fd) => fd,
                Err(error) => {
                    self.skip(path, &error.to_string());
                    continue;
                }
            };
            let (kind, id) = kind_of(&fd).map_err(|e| fail(e.to_string()))?;
            match kind {
                Kind::Dir if depth == 0 => {
                    return Err(fail(format!("deeper than {MAX_DEPTH} folders")));
                }
                Kind::Dir => {
                    let sub = rustix::fs::openat(
                        dir,
                        text.as_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | at,
                        Mode::empty(),
                    )
                    .map_err(|e| fail(format!("{path}: {e}")))?;
                    self.files.entries.push(HostEntry {
                        path: path.clone(),
                        size: 0,
                        dir: true,
                    });
                    self.walk(&sub, &path, host, depth - 1)?;
                }
                Kind::File { size, nlink } => {
                    if let Some(why) = refused_file(nlink) {
                        self.skip(path, &why);
                        continue;
                    }
                    self.check_size(size, host)?;
                    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | at;
                    let file = rustix::fs::openat(dir, text.as_str(), flags, Mode::empty())
                        .map_err(|e| fail(format!("{path}: {e}")))?;
                    self.file(file, id, size, &path)
                        .map_err(|e| fail(format!("{path}: {e}")))?;
                }
                Kind::Link => self.skip(path, "a symbolic link (not followed)"),
                Kind::Other => self.skip(path, "a FIFO, device or socket (never opened)"),
            }
        }
        Ok(())
    }

    fn skip(&mut self, path: String, why: &str) {
        self.skipped += 1;
        if self.skipped <= MAX_NOTES {
            self.files
                .notes
                .push(format!("host entry {path} skipped: {why}"));
        }
    }

    /// Reads `fd` once, at most `size` bytes (what its type check saw; a
    /// file that grew is cut there, one that shrank is what it holds now),
    /// into frames. `id` is the file the type check saw: another swapped in
    /// since is refused.
    fn file(&mut self, fd: OwnedFd, id: (u64, u64), size: u64, dest: &str) -> std::io::Result<()> {
        let (kind, now) = kind_of(&fd)?;
        let Kind::File { nlink, .. } = kind else {
            return Err(std::io::Error::other("it changed while it was opened"));
        };
        if now != id {
            return Err(std::io::Error::other("it changed while it was opened"));
        }
        // A hard link made since the type check is refused as one seen there.
        if let Some(why) = refused_file(nlink) {
            return Err(std::io::Error::other(why));
        }
        let mut file = std::fs::File::from(fd);
        let mut left = size;
        let mut read = 0;
        while left > 0 {
            let want = usize::try_from(left)
                .unwrap_or(CHUNK_BYTES)
                .min(CHUNK_BYTES);
            let mut frame = vec![0; HOST_DATA_HEADER + want];
            let mut filled = 0;
            while filled < want {
                match std::io::Read::read(&mut file, &mut frame[HOST_DATA_HEADER + filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            if filled == 0 {
                break;
            }
            frame.truncate(HOST_DATA_HEADER + filled);
            seal_host_data(&mut frame);
            self.files.frames.push(Bytes::from(frame));
            left -= filled as u64;
            read += filled as u64;
            if filled < want {
                break; // it shrank
            }
        }
        self.files.bytes += read;
        self.files.entries.push(HostEntry {
            path: dest.to_owned(),
            size: read,
            dir: false,
        });
        Ok(())
    }
}

/// Why a regular file is refused, if it is.
fn refused_file(nlink: u64) -> Option<String> {
    (nlink > 1).then(|| {
        format!(
            "has {nlink} hard links: refused, as a hard link may lead to a file outside the \
             root (copy it instead)"
        )
    })
}

fn open_error(error: Errno) -> String {
    match error {
        Errno::LOOP | Errno::NOTDIR => {
            "a symbolic link (or no folder) is on its way: links are not followed".into()
        }
        Errno::XDEV => "it leads outside its root".into(),
        Errno::NOENT => "no such file or folder".into(),
        other => other.to_string(),
    }
}

/// What a call asks to save: `out/...` files of the run, each to a path
/// beneath the write root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRequest {
    /// The run's file as the call names it: `out/...`.
    pub from: String,
    /// Relative to the write root, or absolute inside it.
    pub to: String,
}

impl SaveRequest {
    /// The file's path relative to `/workspace/out`, if plainly under it.
    pub fn source(&self) -> Option<&str> {
        self.from
            .strip_prefix("out/")
            .filter(|rest| plain_components(rest).is_some())
    }
}

/// Checks the saves a call asks for before anything runs: a write root is
/// configured, each source is a plain path under `out/`, each target a
/// plain path beneath the root. Returns each target's components.
pub fn check_saves(saves: &[SaveRequest], root: Option<&Path>) -> Result<Vec<Vec<String>>, String> {
    if saves.is_empty() {
        return Ok(Vec::new());
    }
    let Some(root) = root else {
        return Err(format!(
            "save is not enabled: no write root ({WRITE_VARIABLE} names the one folder runs \
             may save to)"
        ));
    };
    saves
        .iter()
        .map(|save| {
            if save.source().is_none() {
                return Err(format!(
                    "save source {:?} must be a plain path under out/ (the run's \
                     /workspace/out), like out/clean.csv",
                    save.from
                ));
            }
            let refused = || {
                format!(
                    "save target {:?} is outside the write root ({WRITE_VARIABLE}: {}): \
                     no '..', '.', empty part or absolute path elsewhere",
                    save.to,
                    root.display()
                )
            };
            if Path::new(&save.to).is_absolute() {
                match beneath(root, &save.to) {
                    Some(Some(parts)) if !parts.is_empty() => Ok(parts),
                    _ => Err(refused()),
                }
            } else {
                plain_components(&save.to)
                    .map(|parts| parts.into_iter().map(str::to_owned).collect())
                    .ok_or_else(refused)
            }
        })
        .collect()
}

/// Saves each file of `out` that `saves` names (`targets` from
/// [`check_saves`]) beneath `root`: written whole to a new temporary file
/// in its folder, then renamed over the target's name, never replacing an
/// existing file unless `overwrite`, never following a link. Blocking.
/// What could not be saved is a note, naming the path.
pub fn save(
    root: &Path,
    saves: &[SaveRequest],
    targets: &[Vec<String>],
    out: &[(String, Bytes)],
    overwrite: bool,
    method: Method,
) -> (Vec<Saved>, Vec<String>) {
    let mut saved = Vec::new();
    let mut notes = Vec::new();
    let root_fd = match open_root(root, WRITE_VARIABLE) {
        Ok(fd) => fd,
        Err(error) => {
            notes.push(format!("nothing saved: {error}"));
            return (saved, notes);
        }
    };
    for (save, parts) in saves.iter().zip(targets) {
        let to = root.join(parts.join("/"));
        let Some((_, data)) = out
            .iter()
            .find(|(path, _)| Some(path.as_str()) == save.source())
        else {
            notes.push(format!(
                "{} not saved: the run left no regular file there within the bounds \
                 (links and FIFOs are not followed; MCP_BRIDGE_MAX_OUTPUT_FILES, \
                 MCP_BRIDGE_MAX_OUTPUT_FILES_BYTES)",
                save.from
            ));
            continue;
        };
        match save_one(&root_fd, parts, data, overwrite, method) {
            Ok(()) => saved.push(Saved {
                from: save.from.clone(),
                to: to.display().to_string(),
                bytes: data.len() as u64,
            }),
            Err(why) => notes.push(format!(
                "{} not saved to {}: {why}",
                save.from,
                to.display()
            )),
        }
    }
    (saved, notes)
}

/// Temporary names are unique within this process and start with a dot.
fn temporary_name() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".mcp-code-exec-{}-{n}.tmp", std::process::id())
}

fn save_one(
    root: &OwnedFd,
    parts: &[String],
    data: &[u8],
    overwrite: bool,
    method: Method,
) -> Result<(), String> {
    let (name, dirs) = parts.split_last().ok_or("no file name")?;
    let dir = target_folder(root, dirs, method)?;
    let temporary = temporary_name();
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dir, temporary.as_str(), flags, Mode::from_raw_mode(0o644))
        .map_err(|e| format!("cannot create a temporary file beside it: {e}"))?;
    let mut file = std::fs::File::from(fd);
    let written = std::io::Write::write_all(&mut file, data).and_then(|()| file.sync_all());
    drop(file);
    let renamed = written.map_err(|e| e.to_string()).and_then(|()| {
        if overwrite {
            rustix::fs::renameat(&dir, temporary.as_str(), &dir, name.as_str())
        } else {
            match rustix::fs::renameat_with(
                &dir,
                temporary.as_str(),
                &dir,
                name.as_str(),
                RenameFlags::NOREPLACE,
            ) {
                // A file system without RENAME_NOREPLACE: a hard link
                // cannot replace either.
                Err(Errno::INVAL | Errno::NOSYS) => rustix::fs::linkat(
                    &dir,
                    temporary.as_str(),
                    &dir,
                    name.as_str(),
                    rustix::fs::AtFlags::empty(),
                ),
                other => other,
            }
        }
        .map_err(|error| match error {
            Errno::EXIST => {
                "it exists and was not replaced (pass overwrite: true to replace it)".to_owned()
            }
            Errno::ISDIR | Errno::NOTEMPTY => "a folder is there".to_owned(),
            other => other.to_string(),
        })
    });
    // Gone after a rename; after a link or a failure, removed here.
    let _ = rustix::fs::unlinkat(&dir, temporary.as_str(), rustix::fs::AtFlags::empty());
    renamed
}

/// The folder a saved file goes in, beneath the root, made if missing (one
/// component at a time, each opened without following a link).
fn target_folder(root: &OwnedFd, dirs: &[String], method: Method) -> Result<OwnedFd, String> {
    let names: Vec<&str> = dirs.iter().map(String::as_str).collect();
    let flags = OFlags::PATH | OFlags::DIRECTORY;
    let refused = |error: Errno| format!("its folder: {}", open_error(error));
    match open_beneath(method, root.as_fd(), &names, flags, Mode::empty()) {
        Err(Errno::NOENT) => {}
        other => return other.map_err(refused),
    }
    let mut dir = open_beneath(method, root.as_fd(), &[], flags, Mode::empty()).map_err(refused)?;
    for name in names {
        match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(error) => return Err(format!("cannot make its folder {name}: {error}")),
        }
        dir = open_beneath(Method::Walk, dir.as_fd(), &[name], flags, Mode::empty())
            .map_err(refused)?;
    }
    Ok(dir)
}

/// The local path of a `file://` URI (as MCP roots are given), decoded.
pub fn file_uri_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let path = PathBuf::from(String::from_utf8(decoded).ok()?);
    (!path.as_os_str().as_encoded_bytes().contains(&0)).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_written_longer_than_the_path_it_matches_is_no_panic() {
        let parts = |root: &str, path: &str| beneath(Path::new(root), path);
        assert_eq!(parts("/srv/out/", "/srv/out"), Some(Some(vec![])));
        assert_eq!(parts("/a//b", "/a/b/c"), Some(Some(vec!["c".to_owned()])));
        assert_eq!(parts("/a//b", "/a/bé"), None);
        assert_eq!(parts("/srv", "/srv/a/./b"), Some(None), "written as is");
        assert_eq!(parts("/srv", "/srv/../etc"), Some(None));
        assert_eq!(parts("/srv", "/etc"), None);
    }
}
