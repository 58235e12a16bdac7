//! Approval: a human's yes or no for one tool call that an `ask` rule of the
//! tool policy matched, asked through the MCP client with elicitation
//! (`elicitation/create`, form mode, no fields: the answer is the action).
//!
//! Owns the question (server, tool, the rule, the arguments shown in full up
//! to [`SHOWN_ARGUMENT_BYTES`], then cut with how much was left out), the
//! bound on the wait for an answer (`MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT`), one
//! question at a time per run, and what each answer means. It asks only a
//! client that declared elicitation's form mode; every other client, and a
//! 2026-07-28 request (that revision forbids requests from the server), has
//! no approver, so its `ask` calls are refused. It decides nothing itself
//! (that is [`crate::policy`]) and enforces nothing (that is
//! [`crate::proxy`], which asks before it sends a call on).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use rmcp::model::{ElicitRequestParams, ElicitationAction, ElicitationSchema};
use rmcp::service::{Peer, RoleServer};

/// The most bytes of a call's arguments the question shows.
pub const SHOWN_ARGUMENT_BYTES: usize = 4096;

/// What the human is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question<'a> {
    pub server: &'a str,
    pub tool: &'a str,
    /// The policy rule that asks (`file:line`).
    pub rule: &'a str,
    /// The call's arguments as the code sent them (JSON).
    pub arguments: &'a [u8],
}

impl Question<'_> {
    /// The message shown to the human: what would run, with which arguments.
    pub fn message(&self) -> String {
        let shown = self.arguments.len().min(SHOWN_ARGUMENT_BYTES);
        let mut text = String::from_utf8_lossy(&self.arguments[..shown]).into_owned();
        if shown < self.arguments.len() {
            text.push_str(&format!(
                " … ({} more bytes not shown)",
                self.arguments.len() - shown
            ));
        }
        if text.is_empty() {
            text.push_str("{}");
        }
        format!(
            "Code running in the sandbox wants to call the tool {:?} of the MCP server {:?} \
             (tool policy: {}). Arguments: {text}\nAccept to let this one call through; \
             decline to refuse it.",
            self.tool, self.server, self.rule
        )
    }
}

/// The human's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Accepted,
    /// Declined, cancelled, or no answer in time: the prose says which.
    Declined(String),
    /// The client could not be asked (the request failed).
    Unavailable(String),
}

/// Asks a human about one call.
pub trait Approver: Send + Sync + fmt::Debug {
    fn ask<'a>(&'a self, question: Question<'a>) -> BoxFuture<'a, Reply>;
}

/// The approver of one MCP client: elicitation over its session.
pub struct ClientApprover {
    peer: Peer<RoleServer>,
    timeout: Duration,
    /// One question at a time: a run's 64 calls in flight are asked in turn,
    /// never as 64 dialogs at once.
    turn: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ClientApprover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientApprover")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ClientApprover {
    /// The approver of `peer`, if it declared elicitation's form mode.
    pub fn of(peer: &Peer<RoleServer>, timeout: Duration) -> Option<Arc<dyn Approver>> {
        let declared = peer
            .supported_elicitation_modes()
            .contains(&rmcp::service::ElicitationMode::Form);
        declared.then(|| {
            Arc::new(Self {
                peer: peer.clone(),
                timeout,
                turn: tokio::sync::Mutex::new(()),
            }) as Arc<dyn Approver>
        })
    }
}

impl Approver for ClientApprover {
    fn ask<'a>(&'a self, question: Question<'a>) -> BoxFuture<'a, Reply> {
        Box::pin(async move {
            let _turn = self.turn.lock().await;
            let params = ElicitRequestParams::FormElicitationParams {
                meta: None,
                message: question.message(),
                requested_schema: ElicitationSchema::new(Default::default()),
            };
            let asked = tokio::time::timeout(self.timeout, self.peer.create_elicitation(params));
            match asked.await {
                Err(_) => Reply::Declined(format!(
                    "no answer within {} (MCP_BRIDGE_TOOL_APPROVAL_TIMEOUT)",
                    humantime::format_duration(self.timeout)
                )),
                Ok(Err(error)) => Reply::Unavailable(error.to_string()),
                Ok(Ok(result)) => match result.action {
                    ElicitationAction::Accept => Reply::Accepted,
                    ElicitationAction::Decline => Reply::Declined("the user declined".into()),
                    ElicitationAction::Cancel => Reply::Declined("the user cancelled".into()),
                    _ => Reply::Declined("the client answered with an unknown action".into()),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn question(arguments: &[u8]) -> String {
        Question {
            server: "github",
            tool: "delete_repo",
            rule: "/etc/rules:3",
            arguments,
        }
        .message()
    }

    #[test]
    fn the_question_shows_the_call_and_cuts_huge_arguments() {
        let shown = question(br#"{"repo": "a/b"}"#);
        assert!(
            shown.contains(r#""delete_repo" of the MCP server "github""#),
            "{shown}"
        );
        assert!(shown.contains("/etc/rules:3"), "{shown}");
        assert!(shown.contains(r#"Arguments: {"repo": "a/b"}"#), "{shown}");
        assert!(question(b"").contains("Arguments: {}"));
        let huge = vec![b'x'; SHOWN_ARGUMENT_BYTES + 10];
        let cut = question(&huge);
        assert!(
            cut.contains(&format!("{} … (10 more bytes not shown)", "x".repeat(10))),
            "{cut}"
        );
        assert!(cut.len() < SHOWN_ARGUMENT_BYTES + 400);
    }

    #[test]
    fn arguments_cut_inside_a_character_stay_valid_text() {
        let mut arguments = vec![b'a'; SHOWN_ARGUMENT_BYTES - 1];
        arguments.extend("é".as_bytes());
        assert!(question(&arguments).contains('\u{fffd}'));
    }
}
