//! Skills: code a run saves for later (`runtime.save_skill`), importable in
//! every later run (`from skills import name`) and served to the client as
//! MCP skills (`skills/list`, `skills/get`, `skill://` resources).
//!
//! Owns the host's store of them (`MCP_BRIDGE_SKILLS_DIR`, one folder per
//! principal, one per skill: `SKILL.md`, `<name>.py`, its other files; the
//! version it replaced in `.previous/`), the checks on what is stored
//! (names, paths, sizes per skill and in all, `MCP_BRIDGE_SKILLS_BYTES`),
//! atomic replacement (staged, then renamed; one writer at a time), and the
//! sandbox's `@skills` calls, answered beside the run's MCP tool calls
//! ([`SkillCalls`]). A skill is user code: the host only stores bytes and
//! checks names and sizes; it runs only inside sandboxes (the sandbox's
//! `skills.py` compiles it before saving and imports it). Nothing here
//! speaks MCP ([`crate::frontend`] serves the manifests) or sees a container.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use rmcp::model::{Skill, SkillFrontmatter, SkillResource, SkillResources};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::SkillSettings;
use crate::principals::Principal;
use crate::proxy::leading_id;
use crate::report::{ToolCall, ToolCallList};
use crate::sandbox::protocol::encode_answer;
use crate::sandbox::{HostFrame, ToolCalls};

/// What the sandbox names as the server of its skill calls (no MCP server
/// of the user's is named so: names start with a letter or digit).
pub const SERVER: &str = "@skills";
/// One skill's files together, at most.
pub const SKILL_BYTES: usize = 1 << 20;
/// The largest `@skills` call read: a whole skill in base64, and its JSON.
const MAX_CALL_BYTES: usize = SKILL_BYTES * 3 / 2 + (64 << 10);
/// Skills one principal may keep.
const MAX_SKILLS: usize = 256;
/// What a file or folder is charged at least (its inode and block).
const MIN_CHARGE: u64 = 4096;
/// Files of one skill besides its `SKILL.md` and module.
const SKILL_FILES: usize = 32;
/// The parts of a skill file's path, at most (`a/b/c/data.csv`).
const PATH_PARTS: usize = 4;
/// Folders a walk goes down at most: a skill's deepest file's (its path's
/// parts but the last), beneath `.previous/<name>` in a principal's folder.
const WALK_DEPTH: usize = PATH_PARTS + 1;
/// Entries of a skill's folder read at most: its files (its own two
/// besides) and the folders each may be in.
const FOLDER_ENTRIES: usize = SKILL_FILES + 2 + SKILL_FILES * (PATH_PARTS - 1);
/// The longest one-line description.
const DESCRIPTION_CHARS: usize = 1024;
/// The scheme of the skills' files as MCP resources.
pub const SCHEME: &str = "skill://";

/// The store of every principal's skills.
#[derive(Debug)]
pub struct SkillStore {
    /// `None`: skills are off (`MCP_BRIDGE_SKILLS_DIR=off`).
    root: Option<PathBuf>,
    max_bytes: u64,
    /// One save, delete or restore at a time (two runs saving one name at
    /// once: the later wins, the earlier is its previous version).
    writing: Mutex<()>,
}

/// A skill as listed: its module name, description and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkillInfo {
    pub name: String,
    pub description: String,
    pub bytes: u64,
}

/// What `runtime.save_skill` sends.
#[derive(Debug, Deserialize)]
struct Save {
    name: String,
    code: String,
    description: String,
    #[serde(default)]
    usage: Option<String>,
    /// Relative path → base64 bytes.
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

/// The arguments of a `file` call: a skill and a path in it.
#[derive(Deserialize)]
struct NamedFile {
    name: String,
    path: String,
}

impl SkillStore {
    pub fn open(settings: &SkillSettings) -> Self {
        Self {
            root: settings.dir.clone(),
            max_bytes: settings.bytes,
            writing: Mutex::new(()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    /// The store's root (the operator's: links in its path are followed).
    fn root(&self) -> Result<&Path, String> {
        self.root
            .as_deref()
            .ok_or_else(|| "skills are off (MCP_BRIDGE_SKILLS_DIR=off)".into())
    }

    /// The name of `owner`'s folder beneath the root (escaped: `jwt:`
    /// principals carry any text).
    fn owner_folder(&self, owner: &Principal) -> Result<PathBuf, String> {
        self.root()?;
        // Lowercase letters, digits, `_` and `-` as they are, every other
        // byte escaped (so `Ann` and `ann` differ on a case-insensitive
        // file system too); a long name by its hash.
        let mut name = String::from("p-");
        for byte in owner.as_str().bytes() {
            if byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-' {
                name.push(char::from(byte));
            } else {
                name.push_str(&format!("%{byte:02x}"));
            }
        }
        if name.len() > 128 {
            use sha2::Digest as _;
            name = format!("h-{}", hex::encode(sha2::Sha256::digest(owner.as_str())));
        }
        Ok(PathBuf::from(name))
    }

    /// The folder of `owner`'s skills, opened for reading; `None` when
    /// skills are off or it has none (or it is not a folder: a link put
    /// there on the host is not followed).
    fn owner_tree(&self, owner: &Principal) -> Option<Tree> {
        Tree::open(self.root().ok()?, &self.owner_folder(owner).ok()?).ok()
    }

    /// The folder of `owner`'s skills, for a save, delete or restore:
    /// refused when it, or its folders of previous versions and of a swap,
    /// is a link (put there on the host), which those would write through.
    fn owner_dir(&self, owner: &Principal) -> Result<PathBuf, String> {
        let dir = self.root()?.join(self.owner_folder(owner)?);
        for folder in [dir.clone(), dir.join(".previous"), dir.join(".swap")] {
            if let Ok(meta) = std::fs::symlink_metadata(&folder)
                && !meta.is_dir()
            {
                return Err(format!(
                    "the skills folder {} is not a folder (a link or file put there on the \
                     host): refused",
                    folder.display()
                ));
            }
        }
        Ok(dir)
    }

    /// Stores a skill, keeping the version it replaces as the previous one.
    fn save(&self, owner: &Principal, save: Save) -> Result<Value, String> {
        check_name(&save.name)?;
        let description = save.description.trim();
        if description.is_empty()
            || description.contains(['\n', '\r'])
            || description.chars().count() > DESCRIPTION_CHARS
        {
            return Err(format!(
                "a skill's description is one line of 1 to {DESCRIPTION_CHARS} characters"
            ));
        }
        if save.files.len() > SKILL_FILES {
            return Err(format!(
                "a skill has at most {SKILL_FILES} files besides its module"
            ));
        }
        let name = &save.name;
        let module = format!("{name}.py");
        let mut files: Vec<(String, Vec<u8>)> = vec![
            (
                "SKILL.md".into(),
                skill_md(name, description, save.usage.as_deref()).into_bytes(),
            ),
            (module.clone(), save.code.into_bytes()),
        ];
        for (path, data) in save.files {
            check_path(&path)?;
            if path == module || path.rsplit('/').next() == Some("SKILL.md") {
                return Err(format!(
                    "{path} is the skill's own: pass it as code or description"
                ));
            }
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|error| format!("{path}: not base64 ({error})"))?;
            files.push((path, data));
        }
        let bytes: usize = files.iter().map(|(_, data)| data.len()).sum();
        if bytes > SKILL_BYTES {
            return Err(format!(
                "the skill is {bytes} bytes; a skill may be at most {SKILL_BYTES} bytes, its files together"
            ));
        }
        let dir = self.owner_dir(owner)?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        sweep_staging(&dir);
        let current = dir.join(name);
        if !current.exists() && self.list(owner).len() >= MAX_SKILLS {
            return Err(format!(
                "{MAX_SKILLS} skills are saved, the most one client may keep; delete one with \
                 runtime.delete_skill(name)"
            ));
        }
        let owned = self.owner_tree(owner);
        let replaced = owned
            .as_ref()
            .and_then(|tree| tree.folder(&Path::new(".previous").join(name)).ok())
            .map_or(0, |previous| folder_bytes(&previous, 1));
        let used = owned
            .as_ref()
            .map_or(0, |tree| folder_bytes(tree, MAX_SKILLS))
            .saturating_sub(replaced);
        // The skill's folder and its files, each at least a block.
        let charge = MIN_CHARGE
            + files
                .iter()
                .map(|(_, data)| charged(data.len()))
                .sum::<u64>();
        if used + charge > self.max_bytes {
            return Err(format!(
                "the skill store is full: {used} bytes used, {charge} more would pass \
                 {} (MCP_BRIDGE_SKILLS_BYTES); delete a skill with runtime.delete_skill(name)",
                self.max_bytes
            ));
        }
        let staging = dir.join(format!(".staging-{name}"));
        let written = private_folder(&dir).and_then(|()| write_folder(&staging, &files));
        if let Err(error) = written {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(format!("the skill could not be stored: {error}"));
        }
        let previous = dir.join(".previous").join(name);
        let kept_previous = current.exists();
        let swapped = (|| {
            if kept_previous {
                private_folder(&dir.join(".previous"))?;
                if previous.exists() {
                    std::fs::remove_dir_all(&previous)?;
                }
                std::fs::rename(&current, &previous)?;
            }
            std::fs::rename(&staging, &current)
        })();
        swapped.map_err(|error| format!("the skill could not be stored: {error}"))?;
        Ok(json!({
            "name": name,
            "bytes": bytes,
            "replaced": kept_previous,
            "uri": format!("{SCHEME}{}/SKILL.md", skill_name(name)),
        }))
    }

    /// `owner`'s skills, by name.
    pub fn list(&self, owner: &Principal) -> Vec<SkillInfo> {
        let Some(tree) = self.owner_tree(owner) else {
            return Vec::new();
        };
        // Its skills, their previous versions' folder and a save's staging:
        // a folder with more than that (copied in on the host) is read no
        // further.
        let Ok(names) = tree.names(2 * MAX_SKILLS) else {
            return Vec::new();
        };
        let mut skills: Vec<SkillInfo> = names
            .into_iter()
            .filter_map(|(name, kind)| {
                let name = name.into_string().ok()?;
                check_name(&name).ok()?;
                if kind != FileType::Directory {
                    return None;
                }
                let skill = tree.folder(Path::new(&name)).ok()?;
                let text = skill.read_text(Path::new("SKILL.md")).ok()?;
                Some(SkillInfo {
                    description: description_of(&text),
                    bytes: folder_bytes(&skill, 1),
                    name,
                })
            })
            .collect();
        skills.sort_by(|a, b| a.name.cmp(&b.name));
        skills
    }

    /// A skill's module source.
    fn source(&self, owner: &Principal, name: &str) -> Result<String, String> {
        check_name(name)?;
        let module = Path::new(name).join(format!("{name}.py"));
        self.owner_tree(owner)
            .and_then(|tree| tree.read_text(&module).ok())
            .ok_or_else(|| format!("no skill {name:?} is saved"))
    }

    fn delete(&self, owner: &Principal, name: &str) -> Result<Value, String> {
        check_name(name)?;
        let dir = self.owner_dir(owner)?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let current = dir.join(name);
        if !current.exists() {
            return Err(format!("no skill {name:?} is saved"));
        }
        std::fs::remove_dir_all(&current).map_err(|e| format!("not deleted: {e}"))?;
        // Its previous version goes too: deleted means gone, and freed.
        let previous = dir.join(".previous").join(name);
        if previous.exists() {
            std::fs::remove_dir_all(&previous).map_err(|e| format!("not deleted: {e}"))?;
        }
        Ok(json!({ "name": name, "deleted": true }))
    }

    /// Brings back the version a save replaced (the current one becomes
    /// the previous: restoring twice undoes it).
    fn restore(&self, owner: &Principal, name: &str) -> Result<Value, String> {
        check_name(name)?;
        let dir = self.owner_dir(owner)?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let (current, previous) = (dir.join(name), dir.join(".previous").join(name));
        if !previous.exists() {
            return Err(format!("skill {name:?} has no previous version"));
        }
        // A swap a crash interrupted is put back first (it was the current one).
        let swap = dir.join(".swap").join(name);
        if swap.exists() && !current.exists() {
            let _ = std::fs::rename(&swap, &current);
        }
        let _ = std::fs::remove_dir_all(&swap);
        private_folder(&dir.join(".swap")).map_err(|e| format!("not restored: {e}"))?;
        let swapped = (|| {
            let had_current = current.exists();
            if had_current {
                std::fs::rename(&current, &swap)?;
            }
            std::fs::rename(&previous, &current)?;
            if had_current {
                std::fs::rename(&swap, &previous)?;
            }
            Ok::<_, std::io::Error>(())
        })();
        swapped.map_err(|e| format!("not restored: {e}"))?;
        Ok(json!({ "name": name, "restored": true }))
    }

    /// `owner`'s skills as the MCP skills extension lists them (read
    /// while no save changes them).
    pub fn manifests(&self, owner: &Principal) -> Vec<Skill> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.list(owner)
            .into_iter()
            .filter_map(|info| self.manifest_unlocked(owner, &info.name))
            .collect()
    }

    /// One skill's manifest: its `SKILL.md` URI, front matter and files.
    pub fn manifest(&self, owner: &Principal, name: &str) -> Option<Skill> {
        check_name(name).ok()?;
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.manifest_unlocked(owner, name)
    }

    /// The manifest of the skill whose `SKILL.md` is `uri`, if `owner` has it.
    pub fn manifest_at(&self, owner: &Principal, uri: &str) -> Option<Skill> {
        let name = rmcp::model::skill_name_from_uri(uri)?.replace('-', "_");
        self.manifest(owner, &name).filter(|skill| skill.uri == uri)
    }

    fn manifest_unlocked(&self, owner: &Principal, name: &str) -> Option<Skill> {
        let skill = self.owner_tree(owner)?.folder(Path::new(name)).ok()?;
        let skill_md = skill.read_text(Path::new("SKILL.md")).ok()?;
        let base = format!("{SCHEME}{}/", skill_name(name));
        let mut resources = Vec::new();
        for (path, data) in read_folder(&skill, name).ok()? {
            resources.push(SkillResource::from_bytes(format!("{base}{path}"), &data));
        }
        resources.sort_by(|a, b| a.uri.cmp(&b.uri));
        let frontmatter = SkillFrontmatter::new(skill_name(name), description_of(&skill_md));
        Some(Skill::new(
            format!("{base}SKILL.md"),
            frontmatter,
            SkillResources::Files(resources),
        ))
    }

    /// The file of `owner`'s skills at `uri` (`skill://<name>/<path>`).
    pub fn read(&self, owner: &Principal, uri: &str) -> Option<Vec<u8>> {
        let rest = uri.strip_prefix(SCHEME)?;
        let (skill, path) = rest.split_once('/')?;
        let name = skill.replace('-', "_");
        // Only the canonical name (`load-sales`).
        if skill != skill_name(&name) {
            return None;
        }
        self.file(owner, &name, path).ok()
    }

    /// One file of `owner`'s skill `name` (its module, its SKILL.md or a
    /// file saved with it), by a checked relative path.
    fn file(&self, owner: &Principal, name: &str, path: &str) -> Result<Vec<u8>, String> {
        check_name(name)?;
        check_path(path)?;
        let missing = || format!("skill {name:?} has no file {path:?}");
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let tree = self.owner_tree(owner).ok_or_else(missing)?;
        tree.read(&Path::new(name).join(path), SKILL_BYTES)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => missing(),
                _ => {
                    tracing::warn!(skill = name, file = path, error = %e,
                        "a skill file could not be read");
                    format!("skill {name:?}: its file {path:?} could not be read: {e}")
                }
            })
    }

    /// Answers one `@skills` call of a run of `owner`.
    fn answer(&self, owner: &Principal, op: &str, arguments: Value) -> Result<Value, String> {
        let named = || {
            serde_json::from_value::<Named>(arguments.clone())
                .map(|named| named.name)
                .map_err(|e| format!("{op}: {e}"))
        };
        match op {
            "save" => {
                let save: Save =
                    serde_json::from_value(arguments).map_err(|e| format!("save_skill: {e}"))?;
                self.save(owner, save)
            }
            "list" => Ok(serde_json::to_value(self.list(owner)).expect("infos serialize")),
            "source" => self
                .source(owner, &named()?)
                .map(|code| json!({ "code": code })),
            "delete" => self.delete(owner, &named()?),
            "restore" => self.restore(owner, &named()?),
            "file" => {
                let file: NamedFile =
                    serde_json::from_value(arguments).map_err(|e| format!("skill_file: {e}"))?;
                let data = self.file(owner, &file.name, &file.path)?;
                Ok(json!({ "data": base64::engine::general_purpose::STANDARD.encode(data) }))
            }
            _ => Err(format!("no skill operation {op:?}")),
        }
    }
}

/// A module name: `[a-z][a-z0-9]*`, words joined by single underscores
/// (so its MCP name, hyphens for underscores, is a valid skill name).
fn check_name(name: &str) -> Result<(), String> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('_')
        && !name.contains("__")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a skill name: a lowercase letter, then lowercase letters, digits \
             and single underscores between them, at most 64 (like load_sales)"
        ))
    }
}

/// The MCP skill name of module `name` (`load_sales` → `load-sales`).
fn skill_name(name: &str) -> String {
    name.replace('_', "-")
}

/// A relative path of a skill's file: parts of letters, digits, `.`, `_`
/// and `-`, none hidden or `..`, at most 4 deep.
fn check_path(path: &str) -> Result<(), String> {
    let parts: Vec<&str> = path.split('/').collect();
    let valid = !path.is_empty()
        && parts.len() <= PATH_PARTS
        && parts.iter().all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{path:?} is not a skill file's path: relative, parts of letters, digits, . _ -, \
             none hidden, at most {PATH_PARTS} deep"
        ))
    }
}

/// The generated `SKILL.md`: front matter (name, description), then usage.
fn skill_md(name: &str, description: &str, usage: Option<&str>) -> String {
    let quoted = serde_json::to_string(description).expect("a string serializes");
    let mut text = format!(
        "---\nname: {}\ndescription: {quoted}\n---\n\n# {name}\n\n{description}\n\n\
         In a run: `from skills import {name}`, or `from skills.{name} import ...`.\n",
        skill_name(name)
    );
    if let Some(usage) = usage.filter(|u| !u.trim().is_empty()) {
        text.push_str("\n## Usage\n\n");
        text.push_str(usage.trim());
        text.push('\n');
    }
    text.push_str(&format!("\nModule: [{name}.py]({name}.py)\n"));
    text
}

/// The description in a `SKILL.md`'s front matter.
fn description_of(skill_md: &str) -> String {
    skill_md
        .lines()
        .find_map(|line| line.strip_prefix("description: "))
        .map(|quoted| serde_json::from_str(quoted).unwrap_or_else(|_| quoted.to_owned()))
        .unwrap_or_default()
}

/// What a file of `len` bytes is charged against the store's bound.
fn charged(len: usize) -> u64 {
    (len as u64).max(MIN_CHARGE)
}

/// Makes `dir` (and the folders above it) readable by this user only.
fn private_folder(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Removes what a save a crash interrupted left (`.staging-*`).
fn sweep_staging(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with(".staging-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn write_folder(dir: &Path, files: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    for (path, data) in files {
        let file = dir.join(path);
        private_folder(file.parent().expect("beneath dir"))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)?
            .write_all(data)?;
    }
    Ok(())
}

/// A folder of the store opened for reading. Every part of a path beneath
/// it is opened on its own, none through a link, so a link, FIFO or device
/// put in the store on the host (only the store's writes put anything
/// there) is never followed, blocked on or read without bound; only the
/// operator's root path may hold links.
struct Tree {
    dir: std::os::fd::OwnedFd,
}

impl Tree {
    /// The folder `beneath` of the store at `root`.
    fn open(root: &Path, beneath: &Path) -> std::io::Result<Self> {
        use rustix::fs::{Mode, OFlags};
        let root = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir: open_parts(&root, beneath, OFlags::DIRECTORY)?,
        })
    }

    /// Its folder `beneath`.
    fn folder(&self, beneath: &Path) -> std::io::Result<Self> {
        Ok(Self {
            dir: open_parts(&self.dir, beneath, rustix::fs::OFlags::DIRECTORY)?,
        })
    }

    /// The bytes of its file `beneath`, at most `limit` of them: a regular
    /// file (opened without blocking, so a FIFO is refused at once).
    fn read(&self, beneath: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
        let fd = open_parts(&self.dir, beneath, rustix::fs::OFlags::NONBLOCK)?;
        read_opened(std::fs::File::from(fd), limit)
    }

    /// [`Tree::read`] within a whole skill's bound, as UTF-8 text.
    fn read_text(&self, beneath: &Path) -> std::io::Result<String> {
        String::from_utf8(self.read(beneath, SKILL_BYTES)?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Its entries' names ("." and ".." left out), at most `budget`.
    fn names(&self, budget: usize) -> std::io::Result<Vec<(std::ffi::OsString, FileType)>> {
        use std::os::unix::ffi::OsStrExt as _;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.dir)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if names.len() == budget {
                break;
            }
            let name = std::ffi::OsStr::from_bytes(name).to_owned();
            let kind = match entry.file_type() {
                FileType::Unknown => match self.stat(&name) {
                    Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                    Err(_) => continue,
                },
                kind => kind,
            };
            names.push((name, kind));
        }
        Ok(names)
    }

    /// Its entry `name` as it is (a link's own, not its target's).
    fn stat(&self, name: &std::ffi::OsStr) -> std::io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(
            &self.dir,
            name,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Each entry beneath it, links not followed (a link is an entry, never
    /// its target), given to `visit` with its path relative to it, the
    /// folder it is in and its name; at most `budget` entries, and no deeper
    /// than [`WALK_DEPTH`] folders (each is opened a part at a time from
    /// here: a chain planted deeper is not a cost that grows with its
    /// square). `Ok(false)` when the budget ran out before the tree; an
    /// error only when it cannot be read itself (a folder beneath it that
    /// cannot is left out).
    fn walk(
        &self,
        mut budget: usize,
        mut visit: impl FnMut(&str, &Tree, &std::ffi::OsStr, FileType),
    ) -> std::io::Result<bool> {
        let mut folders = vec![(PathBuf::new(), String::new(), 0)];
        while let Some((beneath, prefix, depth)) = folders.pop() {
            let opened;
            let folder = if beneath.as_os_str().is_empty() {
                self
            } else {
                match self.folder(&beneath) {
                    Ok(folder) => {
                        opened = folder;
                        &opened
                    }
                    Err(_) => continue,
                }
            };
            let names = match folder.names(budget + 1) {
                Ok(names) => names,
                Err(error) if depth == 0 => return Err(error),
                Err(_) => continue,
            };
            for (name, kind) in names {
                if budget == 0 {
                    return Ok(false);
                }
                budget -= 1;
                let path = format!("{prefix}{}", name.to_string_lossy());
                visit(&path, folder, &name, kind);
                if kind == FileType::Directory && depth < WALK_DEPTH {
                    folders.push((beneath.join(&name), format!("{path}/"), depth + 1));
                }
            }
        }
        Ok(true)
    }
}

use rustix::fs::FileType;

/// `beneath` opened from `start` one part at a time, each without following
/// a link: the folders as folders, the last part with `last` besides.
fn open_parts(
    start: &impl std::os::fd::AsFd,
    beneath: &Path,
    last: rustix::fs::OFlags,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    use std::path::Component;
    let parts: Vec<_> = beneath
        .components()
        .map(|part| match part {
            Component::Normal(part) => Ok(part),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a plain relative path",
            )),
        })
        .collect::<std::io::Result<_>>()?;
    let plain = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::io::fcntl_dupfd_cloexec(start, 0)?;
    for (n, part) in parts.iter().enumerate() {
        let flags = if n + 1 == parts.len() {
            plain | last
        } else {
            plain | OFlags::DIRECTORY
        };
        fd = rustix::fs::openat(&fd, *part, flags, Mode::empty())?;
    }
    Ok(fd)
}

/// An opened stored file's bytes, at most `limit` of them, when it is a
/// regular file (an operator's file grown past [`SKILL_BYTES`] is not read
/// without bound).
fn read_opened(file: std::fs::File, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let too_large = || {
        std::io::Error::other(if limit == SKILL_BYTES {
            format!("larger than a skill may be ({SKILL_BYTES} bytes, its files together)")
        } else {
            format!("larger than the {limit} bytes left of a skill's {SKILL_BYTES}")
        })
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > limit as u64 {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // It may grow while read.
    file.take(limit as u64 + 1).read_to_end(&mut data)?;
    if data.len() > limit {
        return Err(too_large());
    }
    Ok(data)
}

/// Every file beneath `skill` (relative paths), links not followed, within
/// a skill's bounds: [`FOLDER_ENTRIES`] entries and [`SKILL_BYTES`] in all
/// (what the store's saves put there fits; a tree copied in on the host is
/// read no further, and what is left out is warned of).
fn read_folder(skill: &Tree, name: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let (mut files, mut left) = (Vec::new(), SKILL_BYTES);
    let whole = skill.walk(FOLDER_ENTRIES, |path, folder, entry, kind| {
        if kind != FileType::RegularFile {
            return;
        }
        match folder.read(Path::new(entry), left) {
            Ok(data) => {
                left -= data.len();
                files.push((path.to_owned(), data));
            }
            Err(e) => tracing::warn!(skill = name, file = path, error = %e,
                "a skill file left out: it could not be read"),
        }
    })?;
    if !whole {
        tracing::warn!(
            skill = name,
            "a skill's folder has more than {FOLDER_ENTRIES} entries: the rest is left out"
        );
    }
    Ok(files)
}

/// What the files and folders beneath `tree` are charged (0 when there is
/// none): each at least [`MIN_CHARGE`]. Links are not followed, and at most
/// as many entries are looked at as `skills` skills (and their previous
/// versions) may hold: a tree copied in on the host is counted no further,
/// and what is left out is warned of.
fn folder_bytes(tree: &Tree, skills: usize) -> u64 {
    let mut bytes = 0;
    let whole = tree.walk(
        (2 * skills + 2) * FOLDER_ENTRIES,
        |_, folder, name, kind| match kind {
            FileType::Directory => bytes += MIN_CHARGE,
            FileType::RegularFile => {
                let size = folder.stat(name).map_or(0, |stat| stat.st_size);
                bytes += u64::try_from(size).unwrap_or(0).max(MIN_CHARGE);
            }
            _ => {}
        },
    );
    if matches!(whole, Ok(false)) {
        tracing::warn!(
            "a skills folder has more entries than its skills may have: the rest is not counted"
        );
    }
    bytes
}

/// A run's calls to the host: its `@skills` calls answered by the store
/// (as the run's principal) and listed with the run's tool calls (server
/// `@skills`, tool the runtime function: what a run saved, imported or
/// deleted is in its result and its audit record), every other call handed
/// to the run's MCP tools, if it has any.
pub struct SkillCalls<'a> {
    store: std::sync::Arc<SkillStore>,
    owner: Principal,
    tools: Option<&'a dyn ToolCalls>,
    /// The run's tool-call list (its MCP tools' own, when it has them).
    log: std::sync::Arc<Mutex<ToolCallList>>,
    /// The run's skill calls in flight (at most [`SKILL_CALLS_IN_FLIGHT`]).
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How long a run's end waits for its skill calls still at work.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Skill calls one run may have in flight; one more is refused at once.
const SKILL_CALLS_IN_FLIGHT: usize = 4;

impl<'a> SkillCalls<'a> {
    /// The host calls of one run of `owner`, with its MCP `tools`, if
    /// any, its skill calls listed in `log`.
    pub fn new(
        store: std::sync::Arc<SkillStore>,
        owner: Principal,
        tools: Option<&'a dyn ToolCalls>,
        log: std::sync::Arc<Mutex<ToolCallList>>,
    ) -> Self {
        Self {
            store,
            owner,
            tools,
            log,
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(SKILL_CALLS_IN_FLIGHT)),
        }
    }
}

impl std::fmt::Debug for SkillCalls<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillCalls")
            .field("owner", &self.owner)
            .field("tools", &self.tools.is_some())
            .finish_non_exhaustive()
    }
}

/// What the sandbox's `mcp` package is built from when a run has skills
/// but no MCP servers: nothing.
fn no_servers() -> &'static Value {
    static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    EMPTY.get_or_init(|| json!({}))
}

/// The envelope of a skill call, as the sandbox's channel writes it.
#[derive(Deserialize)]
struct Envelope {
    id: Value,
    tool: String,
    arguments: Option<Box<serde_json::value::RawValue>>,
}

/// A skill operation as a run's tool-call list names it: the runtime's
/// function (`import` for a module's source), so the label set is closed.
fn operation_label(op: &str) -> &'static str {
    match op {
        "save" => "save_skill",
        "list" => "list_skills",
        "source" => "import",
        "delete" => "delete_skill",
        "restore" => "restore_skill",
        "file" => "skill_file",
        _ => "(other)",
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    id: &'a Value,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What follows the server field when the call's JSON names [`SERVER`]:
/// the channel writes `{"id":N,"server": "@skills", ...`; `None` for anything
/// else (the MCP tools' calls).
fn after_skill_server(request: &[u8]) -> Option<&[u8]> {
    let comma = request.iter().position(|&b| b == b',')?;
    request[comma + 1..].strip_prefix(br#""server": "@skills""#)
}

/// Whether the call is the skill store's (see [`after_skill_server`]).
fn is_skill_call(request: &[u8]) -> bool {
    after_skill_server(request).is_some()
}

/// The operation a skill call names, read off the channel's fixed layout
/// (`"server": "@skills", "tool": "save"`) without parsing the rest: the
/// label of a call refused before it is parsed.
fn leading_operation(request: &[u8]) -> &'static str {
    let Some(rest) =
        after_skill_server(request).and_then(|rest| rest.strip_prefix(br#", "tool": ""#))
    else {
        return "(other)";
    };
    let name = rest
        .iter()
        .take(16)
        .position(|&b| b == b'"')
        .map(|end| &rest[..end]);
    name.and_then(|name| std::str::from_utf8(name).ok())
        .map_or("(other)", operation_label)
}

/// The answer refusing `request`, by the id it starts with.
fn refusal(request: &[u8], error: &str) -> HostFrame {
    let answer = Answer {
        id: &leading_id(request),
        ok: false,
        result: None,
        error: Some(error.to_owned()),
    };
    HostFrame::new(encode_answer(&answer, 64 + error.len()), None)
}

impl ToolCalls for SkillCalls<'_> {
    fn metadata(&self) -> &Value {
        match self.tools {
            Some(tools) => tools.metadata(),
            None => no_servers(),
        }
    }

    fn call(&self, request: Bytes) -> BoxFuture<'_, HostFrame> {
        if !is_skill_call(&request) {
            return match self.tools {
                Some(tools) => tools.call(request),
                None => Box::pin(async move { refusal(&request, "this run has no MCP servers") }),
            };
        }
        Box::pin(async move {
            let started = std::time::Instant::now();
            if request.len() > MAX_CALL_BYTES {
                let error = format!(
                    "the skill call is {} bytes; a skill is at most {SKILL_BYTES} bytes, \
                     its files together",
                    request.len()
                );
                return self.refuse(&request, &error, started);
            }
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                let error = format!(
                    "more than {SKILL_CALLS_IN_FLIGHT} skill calls in flight in one run; \
                     await some before starting more"
                );
                return self.refuse(&request, &error, started);
            };
            let (store, owner, log) = (self.store.clone(), self.owner.clone(), self.log.clone());
            let failed = refusal(&request, "the skill store failed");
            // The parse, the files and the listing: off the runtime's
            // threads, and to the end even when the run ends first (a save
            // then done is in its list: see `settled`), holding its seat.
            let answered = tokio::task::spawn_blocking(move || {
                let frame = answer_call(&store, &owner, &request, started, &log);
                drop(permit);
                frame
            })
            .await;
            answered.unwrap_or_else(|_| {
                list_call(&self.log, "(other)", "error", started, 0, &[]);
                failed
            })
        })
    }
}

/// Answers one skill call (its JSON as the sandbox sent it) as `owner`,
/// and lists it in `log`.
fn answer_call(
    store: &SkillStore,
    owner: &Principal,
    request: &[u8],
    started: std::time::Instant,
    log: &Mutex<ToolCallList>,
) -> HostFrame {
    let (id, operation, head, answered) = match serde_json::from_slice::<Envelope>(request) {
        Err(error) => (
            leading_id(request),
            "(other)",
            Vec::new(),
            Err(format!("malformed skill call: {error}")),
        ),
        Ok(Envelope {
            id,
            tool,
            arguments,
        }) => {
            let raw = arguments.as_ref().map_or("null", |raw| raw.get());
            let head = raw.as_bytes()[..raw.len().min(ToolCall::ARGUMENT_BYTES)].to_vec();
            let answered = serde_json::from_str(raw)
                .map_err(|error| format!("malformed skill call: {error}"))
                .and_then(|arguments| store.answer(owner, &tool, arguments));
            (id, operation_label(&tool), head, answered)
        }
    };
    let (result, error) = match answered {
        Ok(result) => (Some(result), None),
        Err(error) => (None, Some(error)),
    };
    let answer = Answer {
        id: &id,
        ok: error.is_none(),
        result,
        error,
    };
    let frame = encode_answer(&answer, 256);
    let outcome = if answer.ok { "ok" } else { "error" };
    let bytes = request.len() + frame.len();
    list_call(log, operation, outcome, started, bytes, &head);
    HostFrame::new(frame, None)
}

/// Lists one skill call with the run's tool calls.
fn list_call(
    log: &Mutex<ToolCallList>,
    operation: &'static str,
    outcome: &'static str,
    started: std::time::Instant,
    bytes: usize,
    head: &[u8],
) {
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.push_with(|| ToolCall::new(SERVER, operation, outcome, started, bytes, head));
}

impl SkillCalls<'_> {
    /// Once every skill call the run started is done and listed: a run
    /// can end while one is still at work on the host (its answer then
    /// goes nowhere, but what it did belongs in the run's list).
    /// Waits at most [`SETTLE_WAIT`] (a store on a hung file system must
    /// not hold the call's answer).
    pub async fn settled(&self) {
        let all = u32::try_from(SKILL_CALLS_IN_FLIGHT).expect("a small count");
        let settled = tokio::time::timeout(SETTLE_WAIT, self.in_flight.acquire_many(all)).await;
        if settled.is_err() {
            tracing::warn!(
                "a skill call still at work {SETTLE_WAIT:?} after its run ended: \
                 the run's list may miss it"
            );
        }
    }

    /// Refuses a skill call over a bound before it is parsed, and lists it
    /// as `over_budget` (as the MCP tool calls' bounds do).
    fn refuse(&self, request: &[u8], error: &str, started: std::time::Instant) -> HostFrame {
        let frame = refusal(request, error);
        list_call(
            &self.log,
            leading_operation(request),
            "over_budget",
            started,
            request.len(),
            &[],
        );
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(bytes: u64) -> (SkillStore, PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mcp-skills-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = SkillSettings {
            dir: Some(dir.clone()),
            bytes,
        };
        (SkillStore::open(&settings), dir)
    }

    fn save(name: &str, code: &str) -> Value {
        json!({"name": name, "code": code, "description": "Loads the sales table."})
    }

    #[test]
    fn a_folder_planted_on_the_host_is_read_only_within_a_skills_bounds() {
        let (store, dir) = store(64 << 20);
        let ann = Principal::new("ann").unwrap();
        let listed = |name: &str| {
            let skill = store.manifest(&ann, name).unwrap();
            let SkillResources::Files(resources) = skill.resources else {
                panic!("files expected");
            };
            resources
        };
        // The largest layout a save makes is read whole: every file as deep
        // as a path may go, each in folders of its own.
        let files: serde_json::Map<String, Value> = (0..SKILL_FILES)
            .map(|n| (format!("a{n}/b/c/f.txt"), json!("aGk=")))
            .collect();
        let mut skill = save("deep", "X = 1\n");
        skill["files"] = Value::Object(files);
        store.answer(&ann, "save", skill).unwrap();
        assert_eq!(listed("deep").len(), SKILL_FILES + 2);
        // A chain of folders deeper than a save makes is not walked down.
        store
            .answer(&ann, "save", save("chain", "X = 1\n"))
            .unwrap();
        let mut bottom = store.owner_dir(&ann).unwrap().join("chain");
        for _ in 0..50 {
            bottom.push("d");
        }
        std::fs::create_dir_all(&bottom).unwrap();
        std::fs::write(bottom.join("bottom.txt"), "x").unwrap();
        assert_eq!(listed("chain").len(), 2);
        // A tree copied in on the host: no more entries than a skill has…
        store.answer(&ann, "save", save("wide", "X = 1\n")).unwrap();
        let wide = store.owner_dir(&ann).unwrap().join("wide");
        for n in 0..600 {
            std::fs::write(wide.join(format!("f{n}.txt")), "x").unwrap();
        }
        let resources = listed("wide");
        assert!(
            (SKILL_FILES..=FOLDER_ENTRIES).contains(&resources.len()),
            "{} files listed",
            resources.len()
        );
        // …nor counts them all for its size.
        let wide_bytes = store
            .list(&ann)
            .into_iter()
            .find(|s| s.name == "wide")
            .unwrap()
            .bytes;
        assert!(
            wide_bytes <= 4 * FOLDER_ENTRIES as u64 * MIN_CHARGE,
            "{wide_bytes} bytes counted"
        );
        // …and no more bytes than a skill has, in all.
        store
            .answer(&ann, "save", save("heavy", "X = 1\n"))
            .unwrap();
        let heavy = store.owner_dir(&ann).unwrap().join("heavy");
        for n in 0..3 {
            std::fs::write(
                heavy.join(format!("big{n}.bin")),
                vec![0u8; SKILL_BYTES / 2 + 1],
            )
            .unwrap();
        }
        let resources = listed("heavy");
        let bytes: u64 = resources.iter().map(|r| r.size).sum();
        assert!(bytes <= SKILL_BYTES as u64, "{bytes} bytes listed");
        let big = resources.iter().filter(|r| r.uri.contains("/big")).count();
        assert_eq!(
            big, 1,
            "one half-skill file fits beside its module and SKILL.md"
        );
        // More skill folders than a principal may keep, copied in on the
        // host: a listing looks at no more than twice what it may keep.
        let owner = store.owner_dir(&ann).unwrap();
        for n in 0..2 * MAX_SKILLS + 8 {
            let planted = owner.join(format!("planted{n}"));
            std::fs::create_dir(&planted).unwrap();
            std::fs::write(planted.join("SKILL.md"), "---\ndescription: x\n---\n").unwrap();
        }
        let listed = store.list(&ann).len();
        assert!(listed <= 2 * MAX_SKILLS, "{listed} skills listed");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stored_file_is_read_only_as_a_bounded_regular_file() {
        let (store, dir) = store(1 << 20);
        let ann = Principal::new("ann").unwrap();
        let files = json!({"notes.txt": base64::engine::general_purpose::STANDARD.encode("hi")});
        let mut skill = save("load_sales", "X = 1\n");
        skill["files"] = files;
        store.answer(&ann, "save", skill).unwrap();
        let file =
            |path: &str| store.answer(&ann, "file", json!({"name": "load_sales", "path": path}));
        assert_eq!(file("notes.txt").unwrap()["data"], "aGk=");
        assert!(
            file("missing.txt")
                .unwrap_err()
                .contains("has no file \"missing.txt\"")
        );
        let skill_dir = store.owner_dir(&ann).unwrap().join("load_sales");
        // A link put there on the host, to a secret outside the store.
        let secret = dir.join("secret");
        std::fs::write(&secret, "password").unwrap();
        std::os::unix::fs::symlink(&secret, skill_dir.join("link.txt")).unwrap();
        let refused = file("link.txt").unwrap_err();
        assert!(refused.contains("could not be read"), "{refused}");
        // A FIFO: refused at once, not a read that blocks.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            skill_dir.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        assert!(file("fifo").unwrap_err().contains("not a regular file"));
        // A file grown past a skill's bound on the host.
        std::fs::write(skill_dir.join("big.bin"), vec![0u8; SKILL_BYTES + 1]).unwrap();
        assert!(
            file("big.bin")
                .unwrap_err()
                .contains("larger than a skill may be")
        );
        // The manifest leaves all three out and lists the rest.
        let skill = store.manifest(&ann, "load_sales").unwrap();
        let SkillResources::Files(resources) = skill.resources else {
            panic!("files expected");
        };
        let uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
        assert!(uris.iter().any(|u| u.ends_with("/notes.txt")), "{uris:?}");
        for left_out in ["link.txt", "fifo", "big.bin"] {
            assert!(!uris.iter().any(|u| u.ends_with(left_out)), "{uris:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn links_put_in_the_store_on_the_host_are_never_followed() {
        let (store, dir) = store(1 << 20);
        let ann = Principal::new("ann").unwrap();
        store.answer(&ann, "save", save("kept", "X = 1\n")).unwrap();
        let owner = store.owner_dir(&ann).unwrap();
        // A skill's layout outside the store, with a secret in a folder.
        let outside = dir.join("outside");
        std::fs::create_dir_all(outside.join("data")).unwrap();
        std::fs::write(outside.join("SKILL.md"), "---\ndescription: x\n---\n").unwrap();
        std::fs::write(outside.join("linked.py"), "SECRET = 1\n").unwrap();
        std::fs::write(outside.join("data/secret.txt"), "password").unwrap();
        let call = |op: &str, arguments: Value| store.answer(&ann, op, arguments);
        // A skill folder that is a link.
        std::os::unix::fs::symlink(&outside, owner.join("linked")).unwrap();
        let names: Vec<String> = store.list(&ann).into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["kept"]);
        assert!(store.manifest(&ann, "linked").is_none());
        assert!(call("source", json!({"name": "linked"})).is_err());
        let read = call("file", json!({"name": "linked", "path": "data/secret.txt"}));
        assert!(read.unwrap_err().contains("could not be read"));
        assert!(store.read(&ann, "skill://linked/data/secret.txt").is_none());
        // A folder in a skill that is a link.
        let kept = owner.join("kept");
        std::os::unix::fs::symlink(outside.join("data"), kept.join("data")).unwrap();
        let read = call("file", json!({"name": "kept", "path": "data/secret.txt"}));
        assert!(read.unwrap_err().contains("could not be read"));
        let skill = store.manifest(&ann, "kept").unwrap();
        let SkillResources::Files(resources) = skill.resources else {
            panic!("files expected");
        };
        assert_eq!(resources.len(), 2, "{resources:?}");
        // The principal's folder itself a link: nothing read, nothing written.
        std::fs::remove_dir_all(&owner).unwrap();
        std::fs::create_dir_all(outside.join("kept")).unwrap();
        std::fs::write(outside.join("kept/SKILL.md"), "---\ndescription: x\n---\n").unwrap();
        std::os::unix::fs::symlink(&outside, &owner).unwrap();
        assert!(store.list(&ann).is_empty());
        assert!(store.manifest(&ann, "kept").is_none());
        let refused = call("save", save("other", "X = 1\n")).unwrap_err();
        assert!(refused.contains("not a folder"), "{refused}");
        assert!(!outside.join("other").exists());
        // Its folder of previous versions a link: a replacing save would
        // move the current version through it.
        std::fs::remove_file(&owner).unwrap();
        std::fs::remove_dir_all(outside.join("kept")).unwrap();
        store.answer(&ann, "save", save("kept", "X = 1\n")).unwrap();
        std::os::unix::fs::symlink(&outside, owner.join(".previous")).unwrap();
        let refused = call("save", save("kept", "X = 2\n")).unwrap_err();
        assert!(refused.contains("not a folder"), "{refused}");
        let refused = call("restore", json!({"name": "kept"})).unwrap_err();
        assert!(refused.contains("not a folder"), "{refused}");
        // …nor its folder of a restore's swap.
        std::fs::remove_file(owner.join(".previous")).unwrap();
        std::os::unix::fs::symlink(&outside, owner.join(".swap")).unwrap();
        let refused = call("restore", json!({"name": "kept"})).unwrap_err();
        assert!(refused.contains("not a folder"), "{refused}");
        assert!(!outside.join("kept/kept.py").exists());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_skill_is_saved_listed_replaced_restored_and_deleted() {
        let (store, dir) = store(1 << 20);
        let ann = Principal::new("ann").unwrap();
        let saved = store.answer(&ann, "save", save("load_sales", "def f():\n    return 1\n"));
        assert_eq!(saved.unwrap()["uri"], "skill://load-sales/SKILL.md");
        let listed = store.list(&ann);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].description, "Loads the sales table.");
        store
            .answer(&ann, "save", save("load_sales", "def f():\n    return 2\n"))
            .unwrap();
        let returns = |n: &str| store.source(&ann, "load_sales").unwrap().contains(n);
        assert!(returns("return 2"));
        for expected in ["return 1", "return 2"] {
            store
                .answer(&ann, "restore", json!({"name": "load_sales"}))
                .unwrap();
            assert!(returns(expected), "restoring twice undoes it");
        }
        // The manifest is valid for the skills extension.
        let skill = store.manifest(&ann, "load_sales").unwrap();
        skill.validate().unwrap();
        assert_eq!(skill.frontmatter.name, "load-sales");
        let module = store
            .read(&ann, "skill://load-sales/load_sales.py")
            .unwrap();
        assert!(String::from_utf8(module).unwrap().contains("return 2"));
        // Another principal sees none of it.
        let bob = Principal::new("bob").unwrap();
        assert!(store.list(&bob).is_empty());
        assert!(
            store
                .read(&bob, "skill://load-sales/load_sales.py")
                .is_none()
        );
        assert!(store.source(&bob, "load_sales").is_err());
        store
            .answer(&ann, "delete", json!({"name": "load_sales"}))
            .unwrap();
        assert!(store.list(&ann).is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn names_paths_and_sizes_are_checked() {
        let (store, dir) = store(64 << 10);
        let ann = Principal::new("ann").unwrap();
        for bad in [
            "Load",
            "1x",
            "a__b",
            "a_",
            "a-b",
            "",
            &"a".repeat(65),
            "../x",
        ] {
            let error = store.answer(&ann, "save", save(bad, "x = 1")).unwrap_err();
            assert!(error.contains("not a skill name"), "{bad}: {error}");
        }
        let mut with_file = save("ok", "x = 1");
        with_file["files"] = json!({"../../etc/passwd": "eA=="});
        assert!(
            store
                .answer(&ann, "save", with_file)
                .unwrap_err()
                .contains("not a skill file")
        );
        let mut hidden = save("ok", "x = 1");
        hidden["files"] = json!({"data/.hidden": "eA=="});
        assert!(store.answer(&ann, "save", hidden).is_err());
        let big = "x".repeat(SKILL_BYTES + 1);
        assert!(
            store
                .answer(&ann, "save", save("big", &big))
                .unwrap_err()
                .contains("at most")
        );
        // The store's bound, across skills.
        let half = "y".repeat(40 << 10);
        store.answer(&ann, "save", save("one", &half)).unwrap();
        let full = store.answer(&ann, "save", save("two", &half)).unwrap_err();
        assert!(full.contains("MCP_BRIDGE_SKILLS_BYTES"), "{full}");
        let mut multi = save("doc", "x = 1");
        multi["description"] = json!("two\nlines");
        assert!(store.answer(&ann, "save", multi).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn reads_take_only_canonical_names_and_checked_paths() {
        let (store, dir) = store(1 << 20);
        let ann = Principal::new("ann").unwrap();
        store
            .answer(&ann, "save", save("load_sales", "x = 1"))
            .unwrap();
        store
            .answer(&ann, "save", save("load_sales", "x = 2"))
            .unwrap();
        assert!(store.read(&ann, "skill://load-sales/SKILL.md").is_some());
        for uri in [
            "skill://load_sales/SKILL.md",
            "skill://load-sales/../load-sales/SKILL.md",
            "skill://load-sales/%2e%2e/SKILL.md",
            "skill://../p-ann/load_sales/SKILL.md",
            "skill://load-sales/.hidden",
            "skill://.previous/load_sales/SKILL.md",
        ] {
            assert!(store.read(&ann, uri).is_none(), "{uri}");
        }
        assert!(store.manifest(&ann, "..").is_none());
        // Names that differ only in case are two owners, on any file system.
        let upper = Principal::new("Ann").unwrap();
        assert_ne!(
            store.owner_dir(&ann).unwrap(),
            store.owner_dir(&upper).unwrap()
        );
        assert!(store.list(&upper).is_empty());
        // Deleted: its previous version too.
        store
            .answer(&ann, "delete", json!({"name": "load_sales"}))
            .unwrap();
        let restored = store.answer(&ann, "restore", json!({"name": "load_sales"}));
        assert!(restored.unwrap_err().contains("no previous version"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_principal_keeps_at_most_its_count_of_skills() {
        let (store, dir) = store(64 << 20);
        let ann = Principal::new("ann").unwrap();
        for n in 0..MAX_SKILLS {
            store
                .answer(&ann, "save", save(&format!("s{n}"), "x = 1"))
                .unwrap();
        }
        let error = store
            .answer(&ann, "save", save("one_more", "x = 1"))
            .unwrap_err();
        assert!(error.contains("256 skills"), "{error}");
        store.answer(&ann, "save", save("s0", "x = 2")).unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "the held lock is what keeps the save at work as its run ends"
    )]
    async fn a_call_at_work_when_its_run_ends_is_still_listed() {
        let (store, dir) = store(1 << 20);
        let store = std::sync::Arc::new(store);
        let log = std::sync::Arc::new(Mutex::new(ToolCallList::default()));
        let ann = Principal::new("ann").unwrap();
        let calls = SkillCalls::new(store.clone(), ann.clone(), None, log.clone());
        let request = format!(
            r#"{{"id":1,"server": "@skills", "tool": "save", "arguments": {}}}"#,
            save("late", "X = 1\n")
        );
        // The save waits on the store's lock when its run ends (the
        // sandbox loop drops the call's future).
        let writing = store.writing.lock().unwrap();
        let mut call = calls.call(Bytes::from(request));
        assert!(futures_util::poll!(&mut call).is_pending());
        drop(call);
        let mut settled = std::pin::pin!(calls.settled());
        assert!(futures_util::poll!(&mut settled).is_pending());
        drop(writing);
        settled.await;
        let listed: Vec<(String, &str)> = log
            .lock()
            .unwrap()
            .calls
            .iter()
            .map(|c| (c.tool.clone(), c.outcome))
            .collect();
        assert_eq!(listed, [("save_skill".to_owned(), "ok")]);
        assert_eq!(store.list(&ann)[0].name, "late");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    #[allow(
        clippy::await_holding_lock,
        reason = "the held lock is what keeps four reads in flight"
    )]
    async fn calls_over_a_bound_are_refused_and_listed() {
        let (store, dir) = store(1 << 20);
        let store = std::sync::Arc::new(store);
        let log = std::sync::Arc::new(Mutex::new(ToolCallList::default()));
        let ann = Principal::new("ann").unwrap();
        let calls = SkillCalls::new(store.clone(), ann, None, log.clone());
        let file = |id: u32| {
            Bytes::from(format!(
                r#"{{"id":{id},"server": "@skills", "tool": "file", "arguments": {{"name": "a", "path": "b"}}}}"#
            ))
        };
        // Four reads held on the store's lock: the fifth is refused at once.
        let writing = store.writing.lock().unwrap();
        let mut held: Vec<_> = (0..4).map(|id| calls.call(file(id))).collect();
        for call in &mut held {
            assert!(futures_util::poll!(call).is_pending());
        }
        let mut fifth = calls.call(file(4));
        assert!(futures_util::poll!(&mut fifth).is_ready());
        let oversize = format!(
            r#"{{"id":5,"server": "@skills", "tool": "save", "arguments": {{"code": "{}"}}}}"#,
            "x".repeat(MAX_CALL_BYTES)
        );
        calls.call(Bytes::from(oversize)).await;
        drop(writing);
        for call in held {
            call.await;
        }
        let log = log.lock().unwrap();
        assert_eq!(log.total, 6);
        let listed: Vec<(&str, &str)> = log
            .calls
            .iter()
            .map(|c| (c.tool.as_str(), c.outcome))
            .collect();
        assert_eq!(
            listed,
            [
                ("skill_file", "over_budget"),
                ("save_skill", "over_budget"),
                ("skill_file", "error"),
                ("skill_file", "error"),
                ("skill_file", "error"),
                ("skill_file", "error"),
            ]
        );
        assert!(log.calls.iter().all(|c| c.server == SERVER));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn only_the_channels_skill_calls_go_to_the_store() {
        assert_eq!(
            leading_operation(br#"{"id":3,"server": "@skills", "tool": "save", "arguments": {}}"#),
            "save_skill"
        );
        assert_eq!(
            leading_operation(
                br#"{"id":3,"server": "@skills", "tool": "rm -rf", "arguments": {}}"#
            ),
            "(other)"
        );
        assert_eq!(
            leading_operation(br#"{"id":3,"server": "@skills", "tool": "saveeeeeeeeeeeeeeeeeeee"#),
            "(other)"
        );
        assert_eq!(leading_operation(b"garbage"), "(other)");
        assert!(is_skill_call(
            br#"{"id":3,"server": "@skills", "tool": "list"}"#
        ));
        assert!(!is_skill_call(
            br#"{"id":3,"server": "time", "tool": "now"}"#
        ));
        assert!(!is_skill_call(
            br#"{"id":3,"tool": "x", "server": "@skills"}"#
        ));
        assert!(!is_skill_call(b"garbage"));
    }
}
