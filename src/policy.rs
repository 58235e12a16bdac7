//! Tool policy: which tools of the user's MCP servers a run's code may
//! call, decided on the host where the code cannot reach.
//!
//! Owns the rules and their matching: a server's own `"allowTools"` and
//! `"denyTools"` (glob patterns in the servers file, carried by
//! [`crate::proxy::discovery::ServerDefinition`]) and the operator's rules
//! file, `MCP_BRIDGE_TOOL_POLICY`: ordered lines `allow|deny|ask
//! server.tool-glob [for principal-glob,…]`, the first match wins (a line
//! with `for` matches the calls of those principals only: the HTTP
//! transport's token names, `local` on stdio), `default allow|deny|ask` sets
//! what no line matches (allow unless said), `#` starts a comment. The file
//! is read once, at start; a line that does not parse stops the launch
//! naming the file and the line. Pure: it reads the one file it is given
//! and knows nothing of servers, sandboxes or calls ([`crate::proxy`]
//! hides denied tools and refuses calls with what it decides).

use std::fmt;
use std::path::Path;

/// What a rule does with the calls it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// The tool is hidden from the run and a call to it is refused.
    Deny,
    /// A call needs a human's approval, asked through the MCP client
    /// ([`crate::approval`]); the tool stays visible.
    Ask,
}

impl Action {
    fn parse(word: &str) -> Option<Self> {
        match word {
            "allow" => Some(Self::Allow),
            "deny" => Some(Self::Deny),
            "ask" => Some(Self::Ask),
            _ => None,
        }
    }
}

/// One line of the rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    action: Action,
    server: String,
    tool: String,
    /// The principals it applies to (globs); empty: everyone.
    principals: Vec<String>,
    /// `file:line`, for the errors that name the rule.
    origin: String,
}

/// The operator's rules (none: every tool allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPolicy {
    rules: Vec<Rule>,
    default: Action,
    /// Where the default was set (`file:line`), or that it is the built-in one.
    default_origin: String,
}

impl Default for ToolPolicy {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            default: Action::Allow,
            default_origin: "the default (no MCP_BRIDGE_TOOL_POLICY rule matched)".into(),
        }
    }
}

/// A server's own patterns, from its entry in the servers file.
#[derive(Debug, Clone, Copy)]
pub struct ServerRules<'a> {
    pub server: &'a str,
    /// The file the server is defined in.
    pub source: &'a Path,
    /// `"allowTools"`: when present, only the tools it matches exist.
    pub allow: Option<&'a [String]>,
    /// `"denyTools"`: the tools it matches do not exist.
    pub deny: &'a [String],
}

/// What the policy decided for one tool, and the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// The rule, as an error names it: `file:line`, or the servers file's key.
    pub rule: String,
}

/// A rules file that cannot be used: the file and line, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PolicyError {}

impl ToolPolicy {
    /// Reads and parses the rules file (`MCP_BRIDGE_TOOL_POLICY`).
    pub fn load(file: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(file).map_err(|error| {
            PolicyError(format!(
                "MCP_BRIDGE_TOOL_POLICY: cannot read {}: {error}",
                file.display()
            ))
        })?;
        Self::parse(&text, &file.display().to_string())
    }

    /// Parses rules text; `name` is the file as errors and refusals name it.
    pub fn parse(text: &str, name: &str) -> Result<Self, PolicyError> {
        let mut policy = Self::default();
        let mut default_seen = false;
        for (index, line) in text.lines().enumerate() {
            let origin = format!("{name}:{}", index + 1);
            let content = line.split('#').next().unwrap_or_default();
            let words: Vec<&str> = content.split_whitespace().collect();
            let fail = |why: String| PolicyError(format!("{origin}: {why}"));
            match words.as_slice() {
                [] => {}
                ["default", word] => {
                    let action = Action::parse(word).ok_or_else(|| {
                        fail(format!("default {word:?}: expected allow, deny or ask"))
                    })?;
                    if default_seen {
                        return Err(fail("a second default line".into()));
                    }
                    default_seen = true;
                    policy.default = action;
                    policy.default_origin = format!("{origin} (default)");
                }
                [word, pattern, rest @ ..] => {
                    let principals = match rest {
                        [] => Vec::new(),
                        ["for", names] => {
                            let names: Vec<String> = names.split(',').map(str::to_owned).collect();
                            if names.iter().any(String::is_empty) {
                                return Err(fail(format!(
                                    "for {names:?}: principal names, comma-separated, like alice,ci-*"
                                )));
                            }
                            names
                        }
                        _ => {
                            return Err(fail(format!(
                                "{:?}: after server.tool only `for principal,…` may follow",
                                rest.join(" ")
                            )));
                        }
                    };
                    let action = Action::parse(word).ok_or_else(|| {
                        fail(format!(
                            "{word:?}: a rule starts with allow, deny, ask or default"
                        ))
                    })?;
                    let Some((server, tool)) = pattern.split_once('.') else {
                        return Err(fail(format!(
                            "{pattern:?}: expected server.tool (globs: * and ?), like github.delete_*"
                        )));
                    };
                    if server.is_empty() || tool.is_empty() {
                        return Err(fail(format!(
                            "{pattern:?}: the server and the tool may not be empty (use *)"
                        )));
                    }
                    policy.rules.push(Rule {
                        action,
                        server: server.into(),
                        tool: tool.into(),
                        principals,
                        origin,
                    });
                }
                _ => {
                    return Err(fail(format!(
                        "{:?}: expected `allow|deny|ask server.tool [for principal,…]` or \
                         `default allow|deny|ask`",
                        content.trim()
                    )));
                }
            }
        }
        Ok(policy)
    }

    /// Whether a policy would change nothing (no rules, default allow).
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.default == Action::Allow
    }

    /// The rules in a line, as `doctor` says it.
    pub fn describe(&self) -> String {
        let count = |action| self.rules.iter().filter(|r| r.action == action).count();
        format!(
            "{} allow, {} deny, {} ask rules; otherwise {:?} ({})",
            count(Action::Allow),
            count(Action::Deny),
            count(Action::Ask),
            self.default,
            self.default_origin
        )
    }

    /// Whether any tool may need a human's approval.
    pub fn asks(&self) -> bool {
        self.default == Action::Ask || self.rules.iter().any(|r| r.action == Action::Ask)
    }

    /// What may be done with `tool` of the server `server` in a call for
    /// `principal`: the server's own `"denyTools"`, then its `"allowTools"`,
    /// then the rules file in order (those for other principals skipped),
    /// then the default.
    pub fn decide(&self, server: ServerRules<'_>, tool: &str, principal: &str) -> Decision {
        let key = |key: &str| {
            format!(
                "{}: \"{key}\" of server {:?}",
                server.source.display(),
                server.server
            )
        };
        if let Some(pattern) = server.deny.iter().find(|p| glob(p, tool)) {
            return Decision {
                action: Action::Deny,
                rule: format!("{} ({pattern:?})", key("denyTools")),
            };
        }
        if let Some(allow) = server.allow
            && !allow.iter().any(|p| glob(p, tool))
        {
            return Decision {
                action: Action::Deny,
                rule: format!("{} (no pattern matches)", key("allowTools")),
            };
        }
        let applies = |r: &&Rule| {
            glob(&r.server, server.server)
                && glob(&r.tool, tool)
                && (r.principals.is_empty() || r.principals.iter().any(|p| glob(p, principal)))
        };
        match self.rules.iter().find(applies) {
            Some(rule) => Decision {
                action: rule.action,
                rule: rule.origin.clone(),
            },
            None => Decision {
                action: self.default,
                rule: self.default_origin.clone(),
            },
        }
    }
}

/// Whether `text` matches `pattern` whole: `*` any run of characters, `?`
/// one character, anything else itself. Linear in practice: the last `*`
/// is the only point it backtracks to.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server<'a>(allow: Option<&'a [String]>, deny: &'a [String]) -> ServerRules<'a> {
        ServerRules {
            server: "github",
            source: Path::new("/home/u/.mcp.json"),
            allow,
            deny,
        }
    }

    fn strings(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything"));
        assert!(glob("delete_*", "delete_repo"));
        assert!(!glob("delete_*", "undelete_repo"), "anchored at the start");
        assert!(glob("*_repo", "delete_repo"));
        assert!(!glob("*_repo", "delete_repos"), "anchored at the end");
        assert!(glob("get_?ime", "get_time"));
        assert!(!glob("get_?ime", "get_ime"), "? is exactly one character");
        assert!(glob("a*b*c", "a-x-b-y-b-c"));
        assert!(!glob("a*b*c", "a-x-b-y-c-d"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        assert!(glob("***", "x"));
        assert!(glob("é*", "été"), "characters, not bytes");
    }

    #[test]
    fn the_first_matching_line_wins_and_the_default_decides_the_rest() {
        let text = "# operator's rules\n\
                    allow github.delete_draft   # one exception first\n\
                    deny  github.delete_*\n\
                    ask   github.create_*\n\
                    \n\
                    allow *.get_*\n\
                    default deny\n";
        let policy = ToolPolicy::parse(text, "/etc/rules").unwrap();
        let none = server(None, &[]);
        let decide = |tool: &str| policy.decide(none, tool, "local");
        assert_eq!(
            decide("delete_draft"),
            Decision {
                action: Action::Allow,
                rule: "/etc/rules:2".into()
            }
        );
        assert_eq!(decide("delete_repo").action, Action::Deny);
        assert_eq!(decide("delete_repo").rule, "/etc/rules:3");
        assert_eq!(decide("create_issue").action, Action::Ask);
        assert_eq!(decide("get_issue").rule, "/etc/rules:6");
        assert_eq!(
            decide("list_issues"),
            Decision {
                action: Action::Deny,
                rule: "/etc/rules:7 (default)".into()
            }
        );
        // Server globs: the rule on line 6 matches every server.
        let time = ServerRules {
            server: "time",
            ..none
        };
        assert_eq!(
            policy.decide(time, "get_current_time", "local").action,
            Action::Allow
        );
        assert_eq!(
            policy.decide(time, "delete_repo", "local").rule,
            "/etc/rules:7 (default)"
        );
        assert!(!policy.allows_everything());
        assert!(policy.asks());
    }

    #[test]
    fn no_rules_allow_everything() {
        let policy = ToolPolicy::default();
        assert!(policy.allows_everything());
        assert!(!policy.asks());
        assert_eq!(
            policy.decide(server(None, &[]), "x", "local").action,
            Action::Allow
        );
        let parsed = ToolPolicy::parse("# nothing yet\n\n", "f").unwrap();
        assert!(parsed.allows_everything());
        let asking = ToolPolicy::parse("default ask", "f").unwrap();
        assert_eq!(
            asking.decide(server(None, &[]), "x", "local").action,
            Action::Ask
        );
    }

    #[test]
    fn a_servers_own_patterns_come_before_the_file() {
        let policy = ToolPolicy::parse("allow github.*\n", "rules").unwrap();
        let deny = strings(&["delete_*"]);
        let allow = strings(&["get_*", "list_*", "delete_draft"]);
        let decided = policy.decide(server(Some(&allow), &deny), "delete_draft", "local");
        assert_eq!(
            decided.action,
            Action::Deny,
            "denyTools wins over allowTools"
        );
        assert_eq!(
            decided.rule,
            "/home/u/.mcp.json: \"denyTools\" of server \"github\" (\"delete_*\")"
        );
        let decided = policy.decide(server(Some(&allow), &deny), "create_issue", "local");
        assert_eq!(decided.action, Action::Deny, "not in allowTools");
        assert!(decided.rule.contains("\"allowTools\""), "{}", decided.rule);
        assert_eq!(
            policy.decide(server(Some(&allow), &deny), "get_issue", "local"),
            Decision {
                action: Action::Allow,
                rule: "rules:1".into()
            }
        );
    }

    #[test]
    fn a_rule_for_principals_applies_to_their_calls_only() {
        let policy = ToolPolicy::parse(
            "allow github.delete_* for admin,ci-*
\
             deny  github.delete_*
\
             ask   github.* for alice
",
            "rules",
        )
        .unwrap();
        let none = server(None, &[]);
        let decide = |tool: &str, principal: &str| policy.decide(none, tool, principal);
        assert_eq!(decide("delete_repo", "admin").action, Action::Allow);
        assert_eq!(decide("delete_repo", "ci-nightly").action, Action::Allow);
        assert_eq!(decide("delete_repo", "alice").rule, "rules:2");
        assert_eq!(decide("delete_repo", "local").action, Action::Deny);
        assert_eq!(decide("create_issue", "alice").action, Action::Ask);
        assert_eq!(
            decide("create_issue", "bob").rule,
            "the default (no MCP_BRIDGE_TOOL_POLICY rule matched)"
        );
    }

    #[test]
    fn a_line_that_does_not_parse_is_named_by_file_and_line() {
        let error = |text: &str| ToolPolicy::parse(text, "/etc/rules").unwrap_err().0;
        assert_eq!(
            error("allow a.b\npermit github.x\n"),
            "/etc/rules:2: \"permit\": a rule starts with allow, deny, ask or default"
        );
        assert!(error("deny github").starts_with("/etc/rules:1: \"github\": expected server.tool"));
        assert!(error("deny .x").contains("may not be empty"));
        assert_eq!(
            error("deny a.b c.d"),
            "/etc/rules:1: \"c.d\": after server.tool only `for principal,…` may follow"
        );
        assert!(error("deny a.b for").contains("only `for principal,…` may follow"));
        assert!(error("deny a.b for alice,,bob").contains("principal names, comma-separated"));
        assert!(error("default maybe").contains("expected allow, deny or ask"));
        assert_eq!(
            error("default deny\ndefault allow"),
            "/etc/rules:2: a second default line"
        );
        let missing = ToolPolicy::load(Path::new("/nonexistent/rules"))
            .unwrap_err()
            .0;
        assert!(missing.starts_with("MCP_BRIDGE_TOOL_POLICY: cannot read /nonexistent/rules"));
    }
}
