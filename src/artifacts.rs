//! Files that runs handed back, kept on the host for a while so that a client
//! can read them as MCP resources (`artifact://<run-id>/<path>`).
//!
//! Owns the store: what is kept, for how long (`MCP_BRIDGE_ARTIFACT_TTL`,
//! freed on a timer when it passes, used or not) and within what budget
//! (`MCP_BRIDGE_ARTIFACT_BYTES`, [`ENTRY_OVERHEAD`] per entry, at most
//! [`MAX_ENTRIES`], least recently used out first), which URIs are gone and
//! why, and the type a file is served as (never one a client would run:
//! [`mime_type`]). Bytes are shared, never copied on read. Bookkeeping under
//! one lock, and the one task that expires it: it knows nothing of runs,
//! containers or the protocol; the call puts, the front end lists and reads.
//! Each file is its principal's: another principal can neither list nor
//! read it, nor learn whether it exists or did.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::principals::Principal;

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
    /// Whose run made it: no other principal may list or read it.
    owner: Principal,
    created: Instant,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    bytes: u64,
    /// URIs that were kept once and are gone, and why, so a read can say
    /// so rather than "unknown": by a hash of the URI (a fixed size each,
    /// however long the path), the last [`GONE_REMEMBERED`] in `gone_order`.
    gone: HashMap<u64, Gone>,
    gone_order: VecDeque<u64>,
    hasher: RandomState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    Expired,
    Evicted,
}

/// How many gone URIs are told apart from unknown ones (about 2 MiB): 16
/// times a full store.
pub const GONE_REMEMBERED: usize = 65_536;
/// What an entry costs besides its bytes (its URI and path are counted too),
/// so that a flood of empty files is bounded by the budget as well.
pub const ENTRY_OVERHEAD: u64 = 256;
/// Entries kept at most, whatever their size: every read scans them.
pub const MAX_ENTRIES: usize = 4096;
/// The expiry timer's shortest pause: what is due within it goes together,
/// so an entry is freed at most this long after its TTL.
pub const SWEEP_SLACK: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct ArtifactStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    ttl: Duration,
    budget: u64,
    /// What one principal's files may take of it together
    /// (`MCP_BRIDGE_ARTIFACT_BYTES_PER_CLIENT`): past it, that principal's
    /// own least recently used go first, never another's.
    per_owner: u64,
    /// The expiry timer was started (with the first put in a runtime).
    sweeping: AtomicBool,
}

impl ArtifactStore {
    pub fn new(ttl: Duration, budget: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                ttl,
                budget,
                per_owner: budget,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// The store with each principal's files bounded to `bytes` together
    /// (by default, the whole budget). Call before sharing it.
    #[must_use]
    pub fn with_per_owner(mut self, bytes: u64) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.per_owner = bytes.min(shared.budget);
        }
        self
    }

    /// Keeps a run's file for `owner`; `None` when it alone is over the
    /// whole budget, or over what one principal may keep.
    pub fn put(
        &self,
        owner: &Principal,
        run_id: &str,
        path: &str,
        bytes: Bytes,
    ) -> Option<Artifact> {
        self.start_sweeping();
        self.put_at(owner, run_id, path, bytes, Instant::now())
    }

    fn put_at(
        &self,
        owner: &Principal,
        run_id: &str,
        path: &str,
        bytes: Bytes,
        now: Instant,
    ) -> Option<Artifact> {
        let uri = format!("{SCHEME}{}/{}", encode(run_id), encode(path));
        let size = bytes.len() as u64 + cost(&uri, path);
        if size > self.shared.per_owner {
            return None;
        }
        let artifact = Artifact {
            uri,
            path: path.to_owned(),
            mime_type: mime_type(path),
            bytes,
        };
        let mut state = self.shared.lock();
        state.expire(now, self.shared.ttl);
        while state.owner_bytes(owner) + size > self.shared.per_owner {
            state.evict_least_recently_used_of(Some(owner));
        }
        while state.bytes + size > self.shared.budget || state.entries.len() >= MAX_ENTRIES {
            state.evict_least_recently_used();
        }
        state.bytes += size;
        let entry = Entry {
            artifact: artifact.clone(),
            owner: owner.clone(),
            created: now,
            last_used: now,
        };
        if let Some(old) = state.entries.insert(artifact.uri.clone(), entry) {
            state.bytes -= old.artifact.size();
        }
        Some(artifact)
    }

    /// Reads a file kept for `owner` (and marks it used). Another
    /// principal's file is [`ArtifactError::Unknown`], as one never made:
    /// whether it exists, or did, is not told.
    pub fn get(&self, owner: &Principal, uri: &str) -> Result<Artifact, ArtifactError> {
        self.get_at(owner, uri, Instant::now())
    }

    fn get_at(
        &self,
        owner: &Principal,
        uri: &str,
        now: Instant,
    ) -> Result<Artifact, ArtifactError> {
        let mut state = self.shared.lock();
        state.expire(now, self.shared.ttl);
        if let Some(entry) = state.entries.get_mut(uri)
            && entry.owner == *owner
        {
            entry.last_used = now;
            return Ok(entry.artifact.clone());
        }
        let key = state.hasher.hash_one((owner, uri));
        match state.gone.get(&key) {
            Some(Gone::Expired) => Err(ArtifactError::Expired(uri.to_owned())),
            Some(Gone::Evicted) => Err(ArtifactError::Evicted(uri.to_owned())),
            None => Err(ArtifactError::Unknown(uri.to_owned())),
        }
    }

    /// Whether `uri` is kept (without marking it used).
    pub fn contains(&self, uri: &str) -> bool {
        self.shared.lock().entries.contains_key(uri)
    }

    /// The live artifacts of `owner`, newest first.
    pub fn list(&self, owner: &Principal) -> Vec<Artifact> {
        self.list_at(owner, Instant::now())
    }

    fn list_at(&self, owner: &Principal, now: Instant) -> Vec<Artifact> {
        let mut state = self.shared.lock();
        state.expire(now, self.shared.ttl);
        let mut live: Vec<&Entry> = state
            .entries
            .values()
            .filter(|entry| entry.owner == *owner)
            .collect();
        live.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(a.artifact.uri.cmp(&b.artifact.uri))
        });
        live.into_iter()
            .map(|entry| entry.artifact.clone())
            .collect()
    }

    /// The expiry timer: one task, started with the first put made in a
    /// runtime, gone with the store. Without a runtime (plain unit tests,
    /// nothing to run it) entries expire as the store is used.
    fn start_sweeping(&self) {
        // A load on every put; the swap only until the timer runs.
        if self.shared.sweeping.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.shared.sweeping.swap(true, Ordering::AcqRel) {
            runtime.spawn(sweep(Arc::downgrade(&self.shared)));
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Frees each entry when its TTL passes (within [`SWEEP_SLACK`]): it sleeps
/// until the oldest is due, or a whole TTL when the store is empty (what is
/// put meanwhile is due later still). It holds the store only while it
/// sweeps, and ends within a TTL of the store's drop.
async fn sweep(shared: Weak<Shared>) {
    loop {
        let pause = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut state = shared.lock();
            state.expire(now, shared.ttl);
            state
                .entries
                .values()
                .map(|entry| entry.created)
                .min()
                .and_then(|oldest| oldest.checked_add(shared.ttl))
                .map_or(shared.ttl, |due| due.saturating_duration_since(now))
        };
        tokio::time::sleep(pause.max(SWEEP_SLACK)).await;
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
        self.evict_least_recently_used_of(None);
    }

    /// Bytes charged for `owner`'s files.
    fn owner_bytes(&self, owner: &Principal) -> u64 {
        self.entries
            .values()
            .filter(|entry| entry.owner == *owner)
            .map(|entry| entry.artifact.size())
            .sum()
    }

    /// Evicts the least recently used file (of `owner` only, if given).
    fn evict_least_recently_used_of(&mut self, owner: Option<&Principal>) {
        let oldest = self
            .entries
            .iter()
            .filter(|(_, entry)| owner.is_none_or(|owner| entry.owner == *owner))
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(uri, _)| uri.clone());
        if let Some(uri) = oldest {
            self.remove(&uri, Gone::Evicted);
        }
    }

    fn remove(&mut self, uri: &str, why: Gone) {
        if let Some(entry) = self.entries.remove(uri) {
            self.bytes -= entry.artifact.size();
            // Told to its owner only: another principal learns nothing.
            let key = self.hasher.hash_one((&entry.owner, uri));
            if self.gone.insert(key, why).is_none() {
                self.gone_order.push_back(key);
                if self.gone_order.len() > GONE_REMEMBERED
                    && let Some(oldest) = self.gone_order.pop_front()
                {
                    self.gone.remove(&oldest);
                }
            }
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

/// The MIME type a file is served as, from its extension. Types a client
/// may render and so run script in (HTML, SVG, XML, JavaScript) are served
/// as `text/plain`: their source, inert; an unknown type is
/// `application/octet-stream`.
pub fn mime_type(path: &str) -> &'static str {
    let extension = path
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" | "out" => "text/plain",
        // Active content, as its source.
        "html" | "htm" | "xhtml" | "xht" | "shtml" | "svg" | "xml" | "xsl" | "xslt" | "js"
        | "mjs" | "cjs" => "text/plain",
        "csv" => "text/csv",
        "tsv" => "text/tab-separated-values",
        "md" => "text/markdown",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "yaml" | "yml" => "application/yaml",
        "py" => "text/x-python",
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
            "application/json" | "application/x-ndjson" | "application/yaml"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    fn me() -> Principal {
        Principal::local()
    }

    /// Another principal neither lists nor reads a file, and is told of it
    /// what it is told of a URI never made, even once the file is gone.
    #[test]
    fn another_principal_cannot_see_a_file_nor_learn_it_exists() {
        let store = ArtifactStore::new(TTL, 1 << 20);
        let other = Principal::new("other").unwrap();
        let t = Instant::now();
        let kept = store
            .put_at(&me(), "r1", "secret.txt", Bytes::from_static(b"x"), t)
            .unwrap();
        assert_eq!(store.list_at(&me(), t).len(), 1);
        assert!(store.list_at(&other, t).is_empty());
        let unknown = ArtifactError::Unknown(kept.uri.clone());
        assert_eq!(store.get_at(&other, &kept.uri, t).unwrap_err(), unknown);
        assert_eq!(store.get_at(&me(), &kept.uri, t).unwrap().bytes, "x");
        let later = t + TTL;
        assert_eq!(
            store.get_at(&me(), &kept.uri, later).unwrap_err(),
            ArtifactError::Expired(kept.uri.clone())
        );
        assert_eq!(store.get_at(&other, &kept.uri, later).unwrap_err(), unknown);
    }

    #[test]
    fn kept_until_the_ttl_then_gone_with_a_clear_error() {
        let store = ArtifactStore::new(TTL, 1000);
        let start = Instant::now();
        let kept = store
            .put_at(&me(), "r1", "out.csv", Bytes::from_static(b"a,b\n"), start)
            .unwrap();
        assert_eq!(kept.uri, "artifact://r1/out.csv");
        assert_eq!(kept.mime_type, "text/csv");
        let read = store.get_at(&me(), &kept.uri, start + TTL / 2).unwrap();
        assert_eq!(read.text(), Some("a,b\n"));
        assert!(matches!(
            store.get_at(&me(), &kept.uri, start + TTL),
            Err(ArtifactError::Expired(uri)) if uri == kept.uri
        ));
        assert!(matches!(
            store.get_at(&me(), "artifact://r9/x", start),
            Err(ArtifactError::Unknown(_))
        ));
        assert!(store.list_at(&me(), start + TTL).is_empty());
    }

    #[test]
    fn the_budget_evicts_the_least_recently_used_first() {
        let entry = |path: &str| 4 + cost(&format!("{SCHEME}r1/{path}"), path);
        let store = ArtifactStore::new(TTL, 2 * entry("a") + 1);
        let t = Instant::now();
        let four = || Bytes::from_static(b"1234");
        store.put_at(&me(), "r1", "a", four(), t).unwrap();
        store
            .put_at(&me(), "r1", "b", four(), t + Duration::from_secs(1))
            .unwrap();
        // Reading `a` makes `b` the least recently used.
        store
            .get_at(&me(), "artifact://r1/a", t + Duration::from_secs(2))
            .unwrap();
        store
            .put_at(&me(), "r2", "c", four(), t + Duration::from_secs(3))
            .unwrap();
        let live: Vec<String> = store
            .list_at(&me(), t + Duration::from_secs(3))
            .into_iter()
            .map(|a| a.uri)
            .collect();
        assert_eq!(live, ["artifact://r2/c", "artifact://r1/a"]);
        assert!(matches!(
            store.get_at(&me(), "artifact://r1/b", t + Duration::from_secs(3)),
            Err(ArtifactError::Evicted(_))
        ));
        let huge = Bytes::from(vec![0; usize::try_from(2 * entry("a")).unwrap()]);
        assert!(
            store.put_at(&me(), "r3", "huge", huge, t).is_none(),
            "larger than the whole budget"
        );
    }

    #[test]
    fn one_principal_past_its_share_evicts_its_own_files_only() {
        let entry = |run: &str, path: &str| 4 + cost(&format!("{SCHEME}{run}/{path}"), path);
        let share = 2 * entry("r1", "a") + 1;
        let store = ArtifactStore::new(TTL, 10 * share).with_per_owner(share);
        let (ann, bob) = (
            Principal::new("ann").unwrap(),
            Principal::new("bob").unwrap(),
        );
        let t = Instant::now();
        let four = || Bytes::from_static(b"1234");
        let kept = store.put_at(&bob, "r0", "b", four(), t).unwrap();
        for (n, run) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
            let at = t + Duration::from_secs(n as u64 + 1);
            store.put_at(&ann, run, "a", four(), at).unwrap();
        }
        let later = t + Duration::from_secs(9);
        let anns: Vec<String> = store
            .list_at(&ann, later)
            .into_iter()
            .map(|a| a.uri)
            .collect();
        assert_eq!(
            anns,
            ["artifact://r4/a", "artifact://r3/a"],
            "ann keeps her share"
        );
        assert!(
            store.get_at(&bob, &kept.uri, later).is_ok(),
            "bob's file stays, though it is the oldest of all"
        );
        let huge = Bytes::from(vec![0; usize::try_from(share).unwrap()]);
        assert!(
            store.put_at(&ann, "r5", "huge", huge, later).is_none(),
            "over a share"
        );
    }

    #[test]
    fn empty_files_are_charged_and_counted_too() {
        let store = ArtifactStore::new(TTL, u64::MAX);
        let t = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            store
                .put_at(&me(), "r", &format!("{i}"), Bytes::new(), t)
                .unwrap();
        }
        assert_eq!(store.list_at(&me(), t).len(), MAX_ENTRIES);
        let small = ArtifactStore::new(TTL, 1000);
        for i in 0..100 {
            small
                .put_at(&me(), "r", &format!("{i}"), Bytes::new(), t)
                .unwrap();
        }
        assert!(
            small.list_at(&me(), t).len() < 5,
            "each entry costs its overhead"
        );
    }

    #[test]
    fn uris_are_percent_encoded_and_read_back() {
        let store = ArtifactStore::new(TTL, 1 << 20);
        let kept = store
            .put(
                &me(),
                "7-1",
                "my dir/résumé #1?.txt",
                Bytes::from_static(b"x"),
            )
            .unwrap();
        assert_eq!(
            kept.uri,
            "artifact://7-1/my%20dir/r%C3%A9sum%C3%A9%20%231%3F.txt"
        );
        assert_eq!(
            store.get(&me(), &kept.uri).unwrap().path,
            "my dir/résumé #1?.txt"
        );
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
    #[test]
    fn active_content_is_served_as_plain_text() {
        for path in [
            "x.html", "x.HTM", "x.xhtml", "x.svg", "x.xml", "x.xsl", "x.js", "x.mjs",
        ] {
            assert_eq!(mime_type(path), "text/plain", "{path}");
        }
        let store = ArtifactStore::new(TTL, 1 << 20);
        let script = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>";
        let kept = store
            .put(&me(), "r", "x.svg", Bytes::from_static(script))
            .unwrap();
        let read = store.get(&me(), &kept.uri).unwrap();
        assert_eq!(read.mime_type, "text/plain");
        assert_eq!(read.text(), std::str::from_utf8(script).ok());
        assert_eq!(mime_type("x.svgz"), "application/octet-stream");
    }

    #[test]
    fn gone_uris_are_told_apart_within_a_bound() {
        let store = ArtifactStore::new(TTL, u64::MAX);
        let t = Instant::now();
        let first = store.put_at(&me(), "r0", "a", Bytes::new(), t).unwrap();
        let put = |i: usize| {
            let at = t + TTL * u32::try_from(i).unwrap();
            store
                .put_at(&me(), &format!("r{i}"), "a", Bytes::new(), at)
                .unwrap();
            at
        };
        // Each put expires the one before: 20,000 gone, and the first still told apart.
        let now = (1..20_000).fold(t, |_, i| put(i));
        let why = |uri: &str, now| match store.get_at(&me(), uri, now) {
            Ok(_) => "live",
            Err(ArtifactError::Expired(_)) => "expired",
            Err(ArtifactError::Evicted(_)) => "evicted",
            Err(ArtifactError::Unknown(_)) => "unknown",
        };
        assert_eq!(
            [why(&first.uri, now), why("artifact://r0/b", now)],
            ["expired", "unknown"]
        );
        let now = (20_000..=GONE_REMEMBERED + 1).fold(now, |_, i| put(i));
        assert_eq!(
            [why(&first.uri, now), why("artifact://r2/a", now)],
            ["unknown", "expired"],
            "the oldest is forgotten"
        );
        let state = store.shared.lock();
        assert_eq!(state.gone.len(), GONE_REMEMBERED);
        assert_eq!(state.gone_order.len(), GONE_REMEMBERED);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn artifacts_expire_on_time_without_any_later_use() {
        let store = ArtifactStore::new(Duration::from_millis(200), 1 << 20);
        let kept = store
            .put(&me(), "r", "a.txt", Bytes::from_static(b"x"))
            .unwrap();
        assert!(store.contains(&kept.uri));
        // `contains` neither expires nor marks used: only the timer can free it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.contains(&kept.uri) {
            assert!(
                Instant::now() < deadline,
                "still held 10 s after a 200 ms TTL"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(
            store.get(&me(), &kept.uri),
            Err(ArtifactError::Expired(_))
        ));
    }
}
