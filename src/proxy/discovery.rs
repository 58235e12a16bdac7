//! Discovery of the user's MCP server definitions, from the files users
//! already keep them in.
//!
//! Owns the search order, which project files are trusted, the file
//! formats, skipping entries that would launch this server itself, and the
//! Python-identifier aliases. Reads files only; starts nothing. A malformed
//! file is a warning naming the file and the reason, and the other files
//! still load.
//!
//! A definition's command runs on the host, outside any sandbox, so where it
//! comes from is the security boundary. The user's own files come first (the
//! first definition of a name wins; files within a folder sorted):
//! `$MCP_SERVERS_CONFIG`, `~/.config/mcp/servers/*.json`, `~/MCPs/*.json`,
//! `~/.claude.json` (top level, then this folder's entry), Claude Desktop's
//! file (`~/Library/Application Support/Claude/…` on macOS, `~/.config/Claude/…`
//! on Linux), `~/.cursor/mcp.json`, `~/.codex/config.toml`
//! (`[mcp_servers.NAME]`). Then the project's files, those of the working
//! directory, which is whatever repository the client opened:
//! `./mcp-servers/*.json`, `./.mcp.json`, `./claude_code_config.json`,
//! `./claude_desktop_config.json`, `./.vscode/mcp.json` (key `servers`). They
//! are read as [`ProjectServers`] says (by default only the `.mcp.json`
//! servers the user approved in Claude Code for this folder), and a project
//! definition of a name a user file defines is skipped with a warning: a
//! repository never replaces the user's server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ProjectServers;
use crate::policy::ServerRules;

/// One configured MCP server the sandbox may call. Its `Debug` shows the
/// names of its environment variables, not their values (often tokens).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerDefinition {
    /// The name as configured (what `run_python(servers=[...])` takes).
    pub name: String,
    /// A Python identifier for it: `mcp_<alias>`, `mcp.servers.<alias>`.
    pub alias: String,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub description: Option<String>,
    /// The file it came from (`doctor` and the capabilities manual show it).
    pub source: PathBuf,
    /// `"allowTools"`: when present, only the tools these globs match exist
    /// for runs (see [`crate::policy`]).
    pub allow_tools: Option<Vec<String>>,
    /// `"denyTools"`: the tools these globs match do not exist for runs.
    pub deny_tools: Vec<String>,
}

impl ServerDefinition {
    /// The server's own tool patterns, as the policy reads them.
    pub fn rules(&self) -> ServerRules<'_> {
        ServerRules {
            server: &self.name,
            source: &self.source,
            allow: self.allow_tools.as_deref(),
            deny: &self.deny_tools,
        }
    }
}

impl std::fmt::Debug for ServerDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDefinition")
            .field("name", &self.name)
            .field("alias", &self.alias)
            .field("command", &self.command)
            .field("args", &self.args)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("description", &self.description)
            .field("source", &self.source)
            .field("allow_tools", &self.allow_tools)
            .field("deny_tools", &self.deny_tools)
            .finish()
    }
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryWarning {
    pub file: PathBuf,
    pub reason: String,
}

/// Where to look: the working directory, the home directory and the
/// environment, injectable for tests.
#[derive(Debug, Clone)]
pub struct SearchRoots {
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
    pub explicit_file: Option<PathBuf>,
    /// The running binary: entries that launch it are skipped.
    pub own_executable: Option<PathBuf>,
    /// Which files of `cwd` are read (`MCP_BRIDGE_PROJECT_SERVERS`).
    pub project: ProjectServers,
}

/// The project file whose servers Claude Code asks the user to approve.
const CLAUDE_PROJECT_FILE: &str = ".mcp.json";

impl SearchRoots {
    pub fn from_environment(project: ProjectServers) -> Self {
        Self {
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            home: std::env::var_os("HOME").map(PathBuf::from),
            explicit_file: std::env::var_os("MCP_SERVERS_CONFIG").map(PathBuf::from),
            own_executable: std::env::current_exe().ok(),
            project,
        }
    }

    /// The user's own files in search order, each with the key holding servers.
    fn user_files(&self) -> Vec<(PathBuf, Format)> {
        let mut files = Vec::new();
        if let Some(file) = &self.explicit_file {
            files.push((file.clone(), Format::McpServers));
        }
        if let Some(home) = &self.home {
            files.extend(json_files_in(&home.join(".config/mcp/servers")));
            files.extend(json_files_in(&home.join("MCPs")));
            files.push((home.join(".claude.json"), Format::ClaudeJson));
            let desktop = if cfg!(target_os = "macos") {
                "Library/Application Support/Claude/claude_desktop_config.json"
            } else {
                ".config/Claude/claude_desktop_config.json"
            };
            files.push((home.join(desktop), Format::McpServers));
            files.push((home.join(".cursor/mcp.json"), Format::McpServers));
            files.push((home.join(".codex/config.toml"), Format::CodexToml));
        }
        files
    }

    /// The project's files (the working directory's) in search order.
    fn project_files(&self) -> Vec<(PathBuf, Format)> {
        let mut files = json_files_in(&self.cwd.join("mcp-servers"));
        for name in [
            CLAUDE_PROJECT_FILE,
            "claude_code_config.json",
            "claude_desktop_config.json",
        ] {
            files.push((self.cwd.join(name), Format::McpServers));
        }
        files.push((self.cwd.join(".vscode/mcp.json"), Format::VsCode));
        files
    }

    /// Which servers of the project file `file` may be read.
    fn trusted<'a>(&self, file: &Path, approvals: &'a Approvals) -> Trust<'a> {
        match self.project {
            ProjectServers::All => Trust::All,
            ProjectServers::Off => Trust::None("MCP_BRIDGE_PROJECT_SERVERS=off"),
            ProjectServers::Approved if file == self.cwd.join(CLAUDE_PROJECT_FILE) => {
                Trust::Approved(approvals)
            }
            ProjectServers::Approved => Trust::None(
                "only the .mcp.json servers approved in Claude Code are read from a project; \
                 MCP_BRIDGE_PROJECT_SERVERS=all reads this file",
            ),
        }
    }
}

/// What the user approved of this folder's `.mcp.json` in Claude Code, as
/// Claude Code records it in `~/.claude.json` (`projects.<folder>`). A
/// repository's own `.claude/settings*.json` could approve itself, so it is
/// not read.
#[derive(Debug, Default)]
struct Approvals {
    all: bool,
    enabled: HashSet<String>,
    disabled: HashSet<String>,
}

impl Approvals {
    fn read(roots: &SearchRoots) -> Self {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase", default)]
        struct Project {
            enable_all_project_mcp_servers: bool,
            enabled_mcpjson_servers: HashSet<String>,
            disabled_mcpjson_servers: HashSet<String>,
        }
        #[derive(Deserialize)]
        struct ClaudeJson {
            #[serde(default)]
            projects: HashMap<String, serde_json::Value>,
        }
        let Some(home) = &roots.home else {
            return Self::default();
        };
        // A file that does not parse was reported when its servers were read.
        let project = std::fs::read_to_string(home.join(".claude.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<ClaudeJson>(&text).ok())
            .and_then(|file| file.projects.get(&*roots.cwd.to_string_lossy()).cloned())
            .and_then(|project| serde_json::from_value::<Project>(project).ok())
            .unwrap_or_default();
        Self {
            all: project.enable_all_project_mcp_servers,
            enabled: project.enabled_mcpjson_servers,
            disabled: project.disabled_mcpjson_servers,
        }
    }

    fn approves(&self, name: &str) -> bool {
        !self.disabled.contains(name) && (self.all || self.enabled.contains(name))
    }
}

/// Which servers of a file are read.
enum Trust<'a> {
    /// A user's file, or any file with `MCP_BRIDGE_PROJECT_SERVERS=all`.
    All,
    /// Those the user approved in Claude Code.
    Approved(&'a Approvals),
    /// None, for this reason.
    None(&'static str),
}

fn json_files_in(dir: &Path) -> Vec<(PathBuf, Format)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
        .into_iter()
        .map(|file| (file, Format::McpServers))
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Format {
    /// `{"mcpServers": {...}, "description": "..."}`
    McpServers,
    /// `~/.claude.json`: top-level `mcpServers`, plus `projects.<cwd>.mcpServers`.
    ClaudeJson,
    /// `.vscode/mcp.json`: `{"servers": {...}}`
    VsCode,
    /// `~/.codex/config.toml`: `[mcp_servers.NAME]`
    CodexToml,
}

#[derive(Debug, Deserialize)]
struct RawEntry {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    description: Option<String>,
    url: Option<String>,
    #[serde(rename = "allowTools")]
    allow_tools: Option<Vec<String>>,
    #[serde(rename = "denyTools", default)]
    deny_tools: Vec<String>,
}

/// Finds every definition, in order, with aliases assigned: the user's
/// files, then the project's as far as they are trusted.
pub fn discover(roots: &SearchRoots) -> (Vec<ServerDefinition>, Vec<DiscoveryWarning>) {
    let mut servers: Vec<ServerDefinition> = Vec::new();
    let mut warnings = Vec::new();
    let approvals = Approvals::read(roots);
    let files = roots
        .user_files()
        .into_iter()
        .map(|(file, format)| (file, format, Trust::All, false))
        .chain(roots.project_files().into_iter().map(|(file, format)| {
            let trust = roots.trusted(&file, &approvals);
            (file, format, trust, true)
        }));
    // Each name's first definition: whether a user's file made it, and which.
    let mut seen: HashMap<String, (bool, PathBuf)> = HashMap::new();
    for (file, format, trust, project) in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                warnings.push(DiscoveryWarning {
                    file,
                    reason: error.to_string(),
                });
                continue;
            }
        };
        if let Trust::None(why) = trust {
            warnings.push(DiscoveryWarning {
                file,
                reason: format!("not read: {why}"),
            });
            continue;
        }
        let entries = match parse_file(&text, format, &roots.cwd) {
            Ok(entries) => entries,
            Err(reason) => {
                warnings.push(DiscoveryWarning { file, reason });
                continue;
            }
        };
        for (name, entry, file_description) in entries {
            let skipped = |reason: String| DiscoveryWarning {
                file: file.clone(),
                reason: format!("server {name:?}: {reason}"),
            };
            if let Some((users, first)) = seen.get(&name) {
                if *users && project {
                    warnings.push(skipped(format!(
                        "skipped: {} defines it, and a project file never replaces \
                         a server of the user's",
                        first.display()
                    )));
                }
                continue;
            }
            if let Trust::Approved(approvals) = &trust {
                if !approvals.approves(&name) {
                    warnings.push(skipped(format!(
                        "not approved for {} in Claude Code (~/.claude.json); \
                         MCP_BRIDGE_PROJECT_SERVERS=all reads it anyway",
                        roots.cwd.display()
                    )));
                    continue;
                }
            }
            seen.insert(name.clone(), (!project, file.clone()));
            let Some(command) = entry.command else {
                let reason = match entry.url {
                    Some(url) => format!(
                        "server {name:?}: remote servers ({url}) are not supported, only stdio"
                    ),
                    None => format!("server {name:?} has no command"),
                };
                warnings.push(DiscoveryWarning {
                    file: file.clone(),
                    reason,
                });
                continue;
            };
            if launches_this_server(&command, &entry.args, roots.own_executable.as_deref()) {
                continue;
            }
            servers.push(ServerDefinition {
                alias: String::new(),
                name,
                command,
                args: entry.args,
                env: entry.env,
                cwd: entry.cwd,
                description: entry.description.or_else(|| file_description.clone()),
                source: file.clone(),
                allow_tools: entry.allow_tools,
                deny_tools: entry.deny_tools,
            });
        }
    }
    let aliases = unique_identifiers(servers.iter().map(|s| s.name.as_str()));
    for (server, alias) in servers.iter_mut().zip(aliases) {
        server.alias = alias;
    }
    (servers, warnings)
}

type Entries = Vec<(String, RawEntry, Option<String>)>;

fn parse_file(text: &str, format: Format, cwd: &Path) -> Result<Entries, String> {
    #[derive(Deserialize)]
    struct McpServersFile {
        #[serde(rename = "mcpServers", default)]
        mcp_servers: serde_json::Map<String, serde_json::Value>,
        description: Option<String>,
        #[serde(default)]
        projects: HashMap<String, serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct VsCodeFile {
        #[serde(default)]
        servers: serde_json::Map<String, serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct CodexFile {
        #[serde(default)]
        mcp_servers: BTreeMap<String, toml::Value>,
    }
    let (map, description): (Vec<(String, serde_json::Value)>, Option<String>) = match format {
        Format::McpServers | Format::ClaudeJson => {
            let file: McpServersFile =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
            let mut map: Vec<_> = file.mcp_servers.into_iter().collect();
            if matches!(format, Format::ClaudeJson) {
                let project = file.projects.get(&cwd.to_string_lossy().into_owned());
                if let Some(servers) = project
                    .and_then(|p| p.get("mcpServers"))
                    .and_then(|s| s.as_object())
                {
                    map.extend(servers.clone());
                }
            }
            (map, file.description)
        }
        Format::VsCode => {
            let file: VsCodeFile =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
            (file.servers.into_iter().collect(), None)
        }
        Format::CodexToml => {
            let file: CodexFile = toml::from_str(text).map_err(|e| format!("invalid TOML: {e}"))?;
            let map = file
                .mcp_servers
                .into_iter()
                .map(|(name, value)| serde_json::to_value(value).map(|json| (name, json)))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            (map, None)
        }
    };
    map.into_iter()
        .map(|(name, value)| {
            let entry: RawEntry =
                serde_json::from_value(value).map_err(|e| format!("server {name:?}: {e}"))?;
            Ok((name, entry, description.clone()))
        })
        .collect()
}

/// Whether an entry would start this very server (a loop: it would proxy itself).
fn launches_this_server(command: &str, args: &[String], own: Option<&Path>) -> bool {
    let is_us = |word: &str| {
        let path = Path::new(word);
        path.file_name()
            .is_some_and(|name| name == env!("CARGO_PKG_NAME"))
            || own.is_some_and(|own| {
                path == own || std::fs::canonicalize(path).is_ok_and(|p| p == own)
            })
    };
    is_us(command) || args.first().is_some_and(|first| is_us(first))
}

const PYTHON_KEYWORDS: &[&str] = &[
    "false", "none", "true", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield", "match", "case", "type",
];

/// A Python identifier for `name`: lowercase `[a-z0-9_]`, no leading digit, no keyword.
pub fn identifier(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if PYTHON_KEYWORDS.contains(&out.as_str()) {
        out.push('_');
    }
    out
}

/// Identifiers for `names`, in order, made unique with `_2`, `_3`… suffixes.
pub fn unique_identifiers<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut taken = HashSet::new();
    names
        .into_iter()
        .map(|name| {
            let base = identifier(name);
            let mut candidate = base.clone();
            let mut n = 2;
            while !taken.insert(candidate.clone()) {
                candidate = format!("{base}_{n}");
                n += 1;
            }
            candidate
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path, project: ProjectServers) -> SearchRoots {
        SearchRoots {
            cwd: dir.join("project"),
            home: Some(dir.join("home")),
            explicit_file: None,
            own_executable: Some(PathBuf::from("/opt/bin/mcp-code-exec")),
            project,
        }
    }

    fn names(servers: &[ServerDefinition]) -> Vec<(&str, &str)> {
        servers
            .iter()
            .map(|s| (s.name.as_str(), s.command.as_str()))
            .collect()
    }

    fn write(path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mcp-code-exec-discovery-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn user_files_first_then_project_files_first_definition_wins() {
        let dir = scratch("order");
        write(
            dir.join("project/mcp-servers/b.json"),
            r#"{"description": "file default", "mcpServers": {
                "time": {"command": "from-folder-b"},
                "fs": {"command": "fs-bin", "args": ["/data"], "env": {"K": "V"},
                       "allowTools": ["read_*"], "denyTools": ["read_secret*"]}}}"#,
        );
        write(
            dir.join("project/mcp-servers/a.json"),
            r#"{"mcpServers": {"time": {"command": "from-folder-a", "description": "own"}}}"#,
        );
        write(
            dir.join("project/.mcp.json"),
            r#"{"mcpServers": {"time": {"command": "from-dot-mcp"}, "web": {"command": "w"}}}"#,
        );
        write(
            dir.join("project/.vscode/mcp.json"),
            r#"{"servers": {"vs": {"command": "code-server"}}}"#,
        );
        write(
            dir.join("home/.codex/config.toml"),
            "[mcp_servers.codex-one]\ncommand = \"c1\"\nargs = [\"x\"]\n",
        );
        write(
            dir.join("home/.cursor/mcp.json"),
            r#"{"mcpServers": {"web": {"command": "later"}}}"#,
        );
        let (servers, warnings) = discover(&roots(&dir, ProjectServers::All));
        assert_eq!(
            names(&servers),
            vec![
                ("web", "later"),
                ("codex-one", "c1"),
                ("time", "from-folder-a"),
                ("fs", "fs-bin"),
                ("vs", "code-server"),
            ]
        );
        assert_eq!(servers[2].description.as_deref(), Some("own"));
        assert_eq!(servers[3].description.as_deref(), Some("file default"));
        assert_eq!(servers[3].env["K"], "V");
        assert_eq!(servers[3].allow_tools, Some(vec!["read_*".to_string()]));
        assert_eq!(servers[3].deny_tools, ["read_secret*"]);
        assert_eq!(servers[2].allow_tools, None, "no key: every tool");
        assert!(servers[2].deny_tools.is_empty());
        assert_eq!(servers[1].alias, "codex_one");
        assert_eq!(servers[0].source, dir.join("home/.cursor/mcp.json"));
        assert_eq!(servers[4].source, dir.join("project/.vscode/mcp.json"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].file, dir.join("project/.mcp.json"));
        assert!(
            warnings[0].reason.starts_with(&format!(
                "server \"web\": skipped: {} defines it",
                dir.join("home/.cursor/mcp.json").display()
            )),
            "{warnings:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_files_warn_and_others_still_load() {
        let dir = scratch("malformed");
        write(dir.join("project/.mcp.json"), "{ not json");
        write(
            dir.join("project/claude_code_config.json"),
            r#"{"mcpServers": {
                "ok": {"command": "x"}, "remote": {"url": "https://example.invalid/mcp"}}}"#,
        );
        let (servers, warnings) = discover(&roots(&dir, ProjectServers::All));
        assert_eq!(servers.len(), 1);
        assert_eq!(warnings.len(), 2);
        assert!(
            warnings[0].file.ends_with(".mcp.json") && warnings[0].reason.contains("invalid JSON")
        );
        assert!(warnings[1].reason.contains("only stdio"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn entries_that_launch_this_server_are_skipped() {
        let dir = scratch("self");
        write(
            dir.join("project/.mcp.json"),
            r#"{"mcpServers": {
                "me": {"command": "/opt/bin/mcp-code-exec", "args": ["serve"]},
                "me2": {"command": "mcp-code-exec"},
                "other": {"command": "npx"}}}"#,
        );
        let (servers, _) = discover(&roots(&dir, ProjectServers::All));
        assert_eq!(
            servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["other"]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// `~/.claude.json` as Claude Code writes it: `github` at the top
    /// level, and this folder's entry with `project` merged in.
    fn claude_json(dir: &Path, project: serde_json::Value) {
        let mut entry = serde_json::json!({"mcpServers": {"local-one": {"command": "l1"}}});
        entry
            .as_object_mut()
            .unwrap()
            .extend(project.as_object().unwrap().clone());
        let folder = dir.join("project").to_string_lossy().into_owned();
        let file = serde_json::json!({
            "mcpServers": {"github": {"command": "users-github"}},
            "projects": {folder: entry, "/elsewhere": {"enableAllProjectMcpServers": true}},
        });
        write(dir.join("home/.claude.json"), &file.to_string());
    }

    #[test]
    fn project_files_are_read_only_as_far_as_they_are_trusted() {
        let dir = scratch("trust");
        write(
            dir.join("project/.mcp.json"),
            r#"{"mcpServers": {"a": {"command": "pa"}, "b": {"command": "pb"},
                "c": {"command": "pc"}, "github": {"command": "repos-github"}}}"#,
        );
        write(
            dir.join("project/mcp-servers/x.json"),
            r#"{"mcpServers": {"x": {"command": "px"}}}"#,
        );
        // Each warning as `file: reason`, the file relative to the project.
        let reasons = |warnings: &[DiscoveryWarning], expected: &[&str]| {
            let project = dir.join("project");
            let said: Vec<String> = warnings
                .iter()
                .map(|w| {
                    let file = w.file.strip_prefix(&project).unwrap().display();
                    format!("{file}: {}", w.reason)
                })
                .collect();
            let starts = said.iter().zip(expected).all(|(s, e)| s.starts_with(e));
            assert!(said.len() == expected.len() && starts, "{said:#?}");
        };
        let users = vec![("github", "users-github"), ("local-one", "l1")];

        claude_json(&dir, serde_json::json!({}));
        let (servers, warnings) = discover(&roots(&dir, ProjectServers::Off));
        assert_eq!(names(&servers), users);
        reasons(
            &warnings,
            &[
                "mcp-servers/x.json: not read: MCP_BRIDGE_PROJECT_SERVERS=off",
                ".mcp.json: not read: MCP_BRIDGE_PROJECT_SERVERS=off",
            ],
        );

        // Nothing approved for this folder (another folder's approval is not ours).
        let (servers, warnings) = discover(&roots(&dir, ProjectServers::Approved));
        assert_eq!(names(&servers), users);
        let not_approved = format!(
            "not approved for {} in Claude Code",
            dir.join("project").display()
        );
        reasons(
            &warnings,
            &[
                "mcp-servers/x.json: not read: only the .mcp.json servers approved in Claude Code \
                 are read from a project; MCP_BRIDGE_PROJECT_SERVERS=all reads this file",
                &format!(".mcp.json: server \"a\": {not_approved}"),
                &format!(".mcp.json: server \"b\": {not_approved}"),
                &format!(".mcp.json: server \"c\": {not_approved}"),
                ".mcp.json: server \"github\": skipped",
            ],
        );

        claude_json(
            &dir,
            serde_json::json!({"enabledMcpjsonServers": ["a", "github"], "disabledMcpjsonServers": []}),
        );
        let (servers, _) = discover(&roots(&dir, ProjectServers::Approved));
        assert_eq!(names(&servers)[2..], [("a", "pa")], "approved by name");

        claude_json(
            &dir,
            serde_json::json!({"enableAllProjectMcpServers": true, "disabledMcpjsonServers": ["b"]}),
        );
        let (servers, warnings) = discover(&roots(&dir, ProjectServers::Approved));
        assert_eq!(
            names(&servers)[2..],
            [("a", "pa"), ("c", "pc")],
            "all but b"
        );
        reasons(
            &warnings[1..2],
            &[&format!(".mcp.json: server \"b\": {not_approved}")],
        );

        let (servers, _) = discover(&roots(&dir, ProjectServers::All));
        assert_eq!(
            names(&servers),
            vec![
                ("github", "users-github"),
                ("local-one", "l1"),
                ("x", "px"),
                ("a", "pa"),
                ("b", "pb"),
                ("c", "pc"),
            ],
            "all: every project file, and still never the repository's github"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn aliases_are_unique_python_identifiers() {
        assert_eq!(identifier("GitHub-API"), "github_api");
        assert_eq!(identifier("2fa"), "_2fa");
        assert_eq!(identifier("class"), "class_");
        assert_eq!(identifier(""), "_");
        assert_eq!(
            unique_identifiers(["a-b", "a_b", "A.B", "x"]),
            vec!["a_b", "a_b_2", "a_b_3", "x"]
        );
    }
}
