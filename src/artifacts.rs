//! Files that runs handed back, kept on the host for a while so that a client
//! can read them as MCP resources (`artifact://<run-id>/<path>`).
//!
//! Owns the store: what is kept, for how long (`MCP_BRIDGE_ARTIFACT_TTL`) and
//! within what budget (`MCP_BRIDGE_ARTIFACT_BYTES`, least recently used out
//! first). Bytes are shared, never copied on read. Pure bookkeeping under
//! one lock: it knows nothing of runs, containers or the protocol; the call
//! puts, the front end lists and reads.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// The URI scheme of artifacts.
pub const SCHEME: &str = "artifact://";

/// One kept file.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub uri: String,
    /// The path under the run's `/workspace/out/`.
    pub path: String,
    pub mime_type: &'static str,
    pub bytes: Bytes,
}

impl Artifact {
    /// Text a client can show as is: UTF-8, and a text-like type.
    pub fn text(&self) -> Option<&str> {
        if is_text_type(self.mime_type) {
            std::str::from_utf8(&self.bytes).ok()
        } else {
            None
        }
    }
}

/// Why a read found nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error(
        "artifact {0} has expired (artifacts are kept for MCP_BRIDGE_ARTIFACT_TTL): run the code \
         again to make it anew"
    )]
    Expired(String),
    #[error(
        "artifact {0} was evicted to make room for newer ones (MCP_BRIDGE_ARTIFACT_BYTES): run the \
         code again to make it anew"
    )]
    Evicted(String),
    #[error(
        "no artifact {0}: artifact URIs come from run_python results (artifact://<run-id>/<path>)"
    )]
    Unknown(String),
}

#[derive(Debug)]
struct Entry {
    artifact: Artifact,
    created: Instant,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    bytes: u64,
    /// URIs that were kept once and are gone, and why, so a read can say
    /// so rather than "unknown". Bounded.
    gone: VecDeque<(String, Gone)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    Expired,
    Evicted,
}

/// How many gone URIs are remembered for a clearer error.
const GONE_REMEMBERED: usize = 1024;
/// What an entry costs besides its bytes (its URI and path are counted too),
/// so that a flood of empty files is bounded by the budget as well.
const ENTRY_OVERHEAD: u64 = 256;
/// Entries kept at most, whatever their size: every read scans them.
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug)]
pub struct ArtifactStore {
    state: Mutex<State>,
    ttl: Duration,
    budget: u64,
}

impl ArtifactStore {
    pub fn new(ttl: Duration, budget: u64) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ttl,
            budget,
        }
    }

    /// Keeps a run's file; `None` when it alone is over the whole budget.
    pub fn put(&self, run_id: &str, path: &str, bytes: Bytes) -> Option<Artifact> {
        self.put_at(run_id, path, bytes, Instant::now())
    }

    fn put_at(&self, run_id: &str, path: &str, bytes: Bytes, now: Instant) -> Option<Artifact> {
        let uri = format!("{SCHEME}{}/{}", encode(run_id), encode(path));
        let size = bytes.len() as u64 + cost(&uri, path);
        if size > self.budget {
            return None;
        }
        let artifact = Artifact {
            uri,
            path: path.to_owned(),
            mime_type: mime_type(path),
            bytes,
        };
        let mut state = self.lock();
        state.expire(now, self.ttl);
        while state.bytes + size > self.budget || state.entries.len() >= MAX_ENTRIES {
            state.evict_least_recently_used();
        }
        state.bytes += size;
        let entry = Entry {
            artifact: artifact.clone(),
            created: now,
            last_used: now,
        };
        if let Some(old) = state.entries.insert(artifact.uri.clone(), entry) {
            state.bytes -= old.artifact.size();
        }
        Some(artifact)
    }

    /// Reads a kept file (and marks it used).
    pub fn get(&self, uri: &str) -> Result<Artifact, ArtifactError> {
        self.get_at(uri, Instant::now())
    }

    fn get_at(&self, uri: &str, now: Instant) -> Result<Artifact, ArtifactError> {
        let mut state = self.lock();
        state.expire(now, self.ttl);
        if let Some(entry) = state.entries.get_mut(uri) {
            entry.last_used = now;
            return Ok(entry.artifact.clone());
        }
        match state.gone.iter().find(|(gone, _)| gone == uri) {
            Some((_, Gone::Expired)) => Err(ArtifactError::Expired(uri.to_owned())),
            Some((_, Gone::Evicted)) => Err(ArtifactError::Evicted(uri.to_owned())),
            None => Err(ArtifactError::Unknown(uri.to_owned())),
        }
    }

    /// Whether `uri` is kept (without marking it used).
    pub fn contains(&self, uri: &str) -> bool {
        self.lock().entries.contains_key(uri)
    }

    /// The live artifacts, newest first.
    pub fn list(&self) -> Vec<Artifact> {
        self.list_at(Instant::now())
    }

    fn list_at(&self, now: Instant) -> Vec<Artifact> {
        let mut state = self.lock();
        state.expire(now, self.ttl);
        let mut live: Vec<&Entry> = state.entries.values().collect();
        live.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(a.artifact.uri.cmp(&b.artifact.uri))
        });
        live.into_iter()
            .map(|entry| entry.artifact.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    fn expire(&mut self, now: Instant, ttl: Duration) {
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| now.duration_since(entry.created) >= ttl)
            .map(|(uri, _)| uri.clone())
            .collect();
        for uri in expired {
            self.remove(&uri, Gone::Expired);
        }
    }

    fn evict_least_recently_used(&mut self) {
        let oldest = self
            .entries
            .iter()
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(uri, _)| uri.clone());
        if let Some(uri) = oldest {
            self.remove(&uri, Gone::Evicted);
        }
    }

    fn remove(&mut self, uri: &str, why: Gone) {
        if let Some(entry) = self.entries.remove(uri) {
            self.bytes -= entry.artifact.size();
            if self.gone.len() == GONE_REMEMBERED {
                self.gone.pop_front();
            }
            self.gone.push_back((uri.to_owned(), why));
        }
    }
}

impl Artifact {
    /// What it is charged against the budget.
    fn size(&self) -> u64 {
        self.bytes.len() as u64 + cost(&self.uri, &self.path)
    }
}

fn cost(uri: &str, path: &str) -> u64 {
    ENTRY_OVERHEAD + uri.len() as u64 + path.len() as u64
}

/// Percent-encodes all but RFC 3986's unreserved characters and `/`, so a
/// URI reads back as it was given (clients normalise what is not encoded).
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// The MIME type of a file, from its extension.
pub fn mime_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" | "out" => "text/plain",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "py" => "text/x-python",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "parquet" => "application/vnd.apache.parquet",
        "xlsx" => "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        _ => "application/octet-stream",
    }
}

/// Whether a type is text a client can show as is.
pub fn is_text_type(mime_type: &str) -> bool {
    mime_type.starts_with("text/")
        || matches!(
            mime_type,
            "application/json"
                | "application/x-ndjson"
                | "application/xml"
                | "application/yaml"
                | "image/svg+xml"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn kept_until_the_ttl_then_gone_with_a_clear_error() {
        let store = ArtifactStore::new(TTL, 1000);
        let start = Instant::now();
        let kept = store
            .put_at("r1", "out.csv", Bytes::from_static(b"a,b\n"), start)
            .unwrap();
        assert_eq!(kept.uri, "artifact://r1/out.csv");
        assert_eq!(kept.mime_type, "text/csv");
        let read = store.get_at(&kept.uri, start + TTL / 2).unwrap();
        assert_eq!(read.text(), Some("a,b\n"));
        assert!(matches!(
            store.get_at(&kept.uri, start + TTL),
            Err(ArtifactError::Expired(uri)) if uri == kept.uri
        ));
        assert!(matches!(
            store.get_at("artifact://r9/x", start),
            Err(ArtifactError::Unknown(_))
        ));
        assert!(store.list_at(start + TTL).is_empty());
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used_first() {
        let entry = |path: &str| 4 + cost(&format!("{SCHEME}r1/{path}"), path);
        let store = ArtifactStore::new(TTL, 2 * entry("a") + 1);
        let t = Instant::now();
        let four = || Bytes::from_static(b"1234");
        store.put_at("r1", "a", four(), t).unwrap();
        store
            .put_at("r1", "b", four(), t + Duration::from_secs(1))
            .unwrap();
        // Reading `a` makes `b` the least recently used.
        store
            .get_at("artifact://r1/a", t + Duration::from_secs(2))
            .unwrap();
        store
            .put_at("r2", "c", four(), t + Duration::from_secs(3))
            .unwrap();
        let live: Vec<String> = store
            .list_at(t + Duration::from_secs(3))
            .into_iter()
            .map(|a| a.uri)
            .collect();
        assert_eq!(live, ["artifact://r2/c", "artifact://r1/a"]);
        assert!(matches!(
            store.get_at("artifact://r1/b", t + Duration::from_secs(3)),
            Err(ArtifactError::Evicted(_))
        ));
        let huge = Bytes::from(vec![0; usize::try_from(2 * entry("a")).unwrap()]);
        assert!(
            store.put_at("r3", "huge", huge, t).is_none(),
            "larger than the whole budget"
        );
    }

    #[test]
    fn empty_files_are_charged_and_counted_too() {
        let store = ArtifactStore::new(TTL, u64::MAX);
        let t = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            store.put_at("r", &format!("{i}"), Bytes::new(), t).unwrap();
        }
        assert_eq!(store.list_at(t).len(), MAX_ENTRIES);
        let small = ArtifactStore::new(TTL, 1000);
        for i in 0..100 {
            small.put_at("r", &format!("{i}"), Bytes::new(), t).unwrap();
        }
        assert!(small.list_at(t).len() < 5, "each entry costs its overhead");
    }

    #[test]
    fn uris_are_percent_encoded_and_read_back() {
        let store = ArtifactStore::new(TTL, 1 << 20);
        let kept = store
            .put("7-1", "my dir/résumé #1?.txt", Bytes::from_static(b"x"))
            .unwrap();
        assert_eq!(
            kept.uri,
            "artifact://7-1/my%20dir/r%C3%A9sum%C3%A9%20%231%3F.txt"
        );
        assert_eq!(store.get(&kept.uri).unwrap().path, "my dir/résumé #1?.txt");
    }

    #[test]
    fn text_is_only_what_a_client_can_show() {
        let artifact = |path: &str, bytes: &'static [u8]| Artifact {
            uri: String::new(),
            path: path.into(),
            mime_type: mime_type(path),
            bytes: Bytes::from_static(bytes),
        };
        assert_eq!(artifact("r.JSON", b"{}").text(), Some("{}"));
        assert_eq!(artifact("plot.png", b"\x89PNG").text(), None);
        assert_eq!(artifact("bad.txt", b"\xff\xfe").text(), None);
        assert_eq!(artifact("noext", b"abc").text(), None);
    }
}
