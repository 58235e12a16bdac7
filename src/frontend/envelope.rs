//! Reads the top level of a JSON-RPC line that did not parse as a message:
//! its shape, its `id`, whether it is a notification, how deeply it nests.
//!
//! Owns only this reading, for [`super::transport`], which answers such lines
//! itself. It walks the bytes without recursion and without trusting them
//! (any nesting depth, any truncation, invalid UTF-8), so it reads what
//! serde_json refuses: a line nested past serde_json's depth limit, or only
//! the first bytes of a line over the size limit. It never decides what a
//! valid message is (rmcp's types do) and allocates nothing but the id.

use rmcp::model::RequestId;

/// serde_json's nesting limit: a document nested this deep does not parse.
pub const DEPTH_LIMIT: usize = 128;

/// The top level of a line, as far as it could be read.
#[derive(Debug, Default, PartialEq)]
pub struct Envelope {
    pub shape: Shape,
    pub id: Id,
    /// `"method"` is a string.
    pub method: bool,
    /// `"jsonrpc"` is `"2.0"`.
    pub jsonrpc: bool,
    /// The deepest nesting seen (1 for a flat object).
    pub depth: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Shape {
    /// `{...}`
    Object,
    /// `[...]`: a batch.
    Array,
    /// Anything else, or nothing.
    #[default]
    Other,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Id {
    /// No top-level `id` member (as far as the line was read).
    #[default]
    Absent,
    /// An `id` of a type MCP allows: an integer or a string.
    Readable(RequestId),
    /// An `id` of another type (null, a fraction, an object, ...) or unreadable.
    Unreadable,
}

impl Envelope {
    /// A JSON-RPC notification: no `id`, a string `method`, `"jsonrpc": "2.0"`.
    pub fn is_notification(&self) -> bool {
        self.shape == Shape::Object && self.id == Id::Absent && self.method && self.jsonrpc
    }

    /// The id to answer with: the request's, or none (answered as `null`).
    pub fn answer_id(&self) -> Option<RequestId> {
        match &self.id {
            Id::Readable(id) => Some(id.clone()),
            Id::Absent | Id::Unreadable => None,
        }
    }
}

/// Reads the top level of `bytes` (a whole line, or only its start).
pub fn read(bytes: &[u8]) -> Envelope {
    let mut envelope = Envelope::default();
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut at = skip_space(bytes, 0);
    match bytes.get(at) {
        Some(b'{') => envelope.shape = Shape::Object,
        Some(b'[') => {
            envelope.shape = Shape::Array;
            envelope.depth = value_end(bytes, at).1;
            return envelope;
        }
        _ => return envelope,
    }
    envelope.depth = 1;
    at += 1;
    loop {
        at = skip_space(bytes, at);
        if bytes.get(at) != Some(&b'"') {
            return envelope; // `}`, or not an object member
        }
        let Some(key_end) = string_end(bytes, at) else {
            return envelope;
        };
        let key = &bytes[at + 1..key_end - 1];
        at = skip_space(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return envelope;
        }
        let start = skip_space(bytes, at + 1);
        let (end, depth) = value_end(bytes, start);
        envelope.depth = envelope.depth.max(1 + depth);
        let Some(end) = end else {
            // Cut off inside this value: a value cut short is no id.
            if key == b"id" {
                envelope.id = Id::Unreadable;
            }
            return envelope;
        };
        let value = &bytes[start..end];
        match key {
            b"id" => {
                envelope.id = match serde_json::from_slice::<RequestId>(value) {
                    Ok(id) => Id::Readable(id),
                    Err(_) => Id::Unreadable,
                }
            }
            b"method" => envelope.method = value.first() == Some(&b'"'),
            b"jsonrpc" => envelope.jsonrpc = value == b"\"2.0\"",
            _ => {}
        }
        at = skip_space(bytes, end);
        if bytes.get(at) != Some(&b',') {
            return envelope;
        }
        at += 1;
    }
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|b| b" \t\r\n".contains(b)) {
        at += 1;
    }
    at
}

/// The end (exclusive) of the string whose opening quote is at `at`.
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        match bytes.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The end (exclusive) of the value starting at `at`, if it ends within
/// `bytes`, and the deepest nesting inside it (0 for a scalar).
fn value_end(bytes: &[u8], at: usize) -> (Option<usize>, usize) {
    match bytes.get(at) {
        None => (None, 0),
        Some(b'"') => (string_end(bytes, at), 0),
        Some(b'{' | b'[') => {
            let (mut depth, mut deepest, mut i) = (0usize, 0usize, at);
            while let Some(&b) = bytes.get(i) {
                match b {
                    b'{' | b'[' => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return (Some(i + 1), deepest);
                        }
                    }
                    b'"' => match string_end(bytes, i) {
                        Some(end) => {
                            i = end;
                            continue;
                        }
                        None => return (None, deepest),
                    },
                    _ => {}
                }
                i += 1;
            }
            (None, deepest)
        }
        Some(_) => {
            let end = bytes[at..]
                .iter()
                .position(|b| b",}] \t\r\n".contains(b))
                .map(|n| at + n);
            (end, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::NumberOrString;

    fn id(line: &str) -> Id {
        read(line.as_bytes()).id
    }

    #[test]
    fn reads_the_top_level_id_of_any_line() {
        let number = |n| Id::Readable(NumberOrString::Number(n));
        assert_eq!(
            id(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"argu"#),
            number(7),
            "a line cut short"
        );
        assert_eq!(
            id(r#"{"method":"x","params":{"a":[1,{"id":3}],"s":"}\"id\":4"},"id":"req-9"}"#),
            Id::Readable(NumberOrString::String("req-9".into())),
            "nested ids and ids in strings are skipped"
        );
        assert_eq!(id(r#"{"method":"x","params":{"code":"pri"#), Id::Absent);
        assert_eq!(id(r#"{"id":1.5,"method":"x"}"#), Id::Unreadable);
        assert_eq!(id(r#"{"id":null,"method":"x"}"#), Id::Unreadable);
        assert_eq!(id(r#"{"id":{"a":1},"method":"x"}"#), Id::Unreadable);
        assert_eq!(id(r#"{"id":12"#), Id::Unreadable, "an id cut short");
        let deep = format!(
            r#"{{"params":{{"_meta":{}1{}}},"id":5}}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        let envelope = read(deep.as_bytes());
        assert_eq!(envelope.id, number(5), "past serde_json's depth limit");
        assert_eq!(envelope.depth, 302);
        assert_eq!(read(b"[{\"id\":1}]").shape, Shape::Array);
        assert_eq!(read(b"\xff\xfe").shape, Shape::Other);
    }

    #[test]
    fn tells_a_notification() {
        assert!(read(br#"{"jsonrpc":"2.0","method":"notifications/x"}"#).is_notification());
        assert!(!read(br#"{"jsonrpc":"2.0","method":5}"#).is_notification());
        assert!(!read(br#"{"jsonrpc":"1.0","method":"x"}"#).is_notification());
        assert!(!read(br#"{"jsonrpc":"2.0","method":"x","id":null}"#).is_notification());
    }
}
