//! Packages: the host's wheel cache, served to sandboxes as a package index.
//!
//! Owns the index sandboxes install from: a PEP 503 simple index the host
//! serves itself under [`INDEX_HOST`] (a name no resolver knows: requests
//! for it reach this module through the run's HTTP proxy, never the
//! network, whatever egress allows), filled from the upstream index (the
//! one the host's pip is configured with, or `MCP_BRIDGE_PACKAGE_INDEX`)
//! and kept in `MCP_BRIDGE_PACKAGE_CACHE` within
//! `MCP_BRIDGE_PACKAGE_CACHE_BYTES` (least recently used out first).
//!
//! What it guarantees: only wheels are listed (nothing is ever built from
//! source, here or in the sandbox); the host fetches only the files of
//! pages it read from upstream, checks each against the page's SHA-256
//! before it is kept, and never opens, imports or runs one; a sandbox can
//! only read the cache (what a run writes stays in its own package
//! directory). It knows nothing of containers or runs: `pip` in the
//! sandbox is its client. [`requirement`] checks what a call may ask for.

mod plan;
pub mod requirement;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::config::{CaBundle, PackageSettings};
use crate::egress::{Body, Site};
use crate::sandbox::protocol::{Installed, PlannedWheel};
use upstream::{Listing, Upstream, UpstreamFile};

/// The name sandboxes reach the index under (`.invalid` never resolves).
pub const INDEX_HOST: &str = "packages.mcp-code-exec.invalid";
/// How long a project's page is served from memory before it is read again.
const PAGE_TTL: Duration = Duration::from_secs(10 * 60);
/// Project pages kept in memory, and the files they list, at most (the
/// oldest pages go first).
const MAX_PAGES: usize = 1024;
const MAX_LISTED_FILES: usize = 200_000;
/// Downloads from upstream at once, for all runs.
const MAX_FILLS: usize = 4;
/// One download, at most.
const FILL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The index; cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct PackageIndex {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: PackageSettings,
    trust: Option<CaBundle>,
    /// Configured at first use; a failure is not kept (the next request tries again).
    upstream: tokio::sync::OnceCell<Upstream>,
    /// The cache directory has been read.
    scanned: tokio::sync::OnceCell<()>,
    state: Mutex<State>,
    fills: tokio::sync::Semaphore,
}

#[derive(Debug, Default)]
struct State {
    /// Project pages read from upstream, by normalized name.
    pages: HashMap<String, (Instant, Arc<Listing>)>,
    /// Files of those pages, by SHA-256: where upstream serves each.
    files: HashMap<String, UpstreamFile>,
    /// What the cache holds: file name in the cache directory → bytes and last use.
    cached: HashMap<String, (u64, SystemTime)>,
    cached_bytes: u64,
    /// Files being fetched (one download per file at a time).
    filling: HashSet<String>,
    /// What requirement sets resolved to ([`plan`]), by [`plan::key`].
    plans: HashMap<String, plan::Plan>,
}

impl PackageIndex {
    /// The index over the cache in `settings.cache_dir` (read when first
    /// used); TLS to upstream trusts `trust` (`MCP_BRIDGE_CA_BUNDLE`) when
    /// set, else what the host's pip trusts.
    pub fn new(settings: PackageSettings, trust: Option<CaBundle>) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                trust,
                upstream: tokio::sync::OnceCell::new(),
                scanned: tokio::sync::OnceCell::new(),
                state: Mutex::new(State::default()),
                fills: tokio::sync::Semaphore::new(MAX_FILLS),
            }),
        }
    }
}

impl PackageIndex {
    /// The wheels to install `requirements` from in a sandbox of `image`
    /// without pip, when a fresh plan for them holds (else empty: pip then
    /// resolves them); always empty with `MCP_BRIDGE_PACKAGE_PLANS=off`.
    pub fn plan(&self, image: &str, requirements: &[String]) -> Arc<[PlannedWheel]> {
        if !self.inner.settings.plans || requirements.is_empty() {
            return Arc::from([]);
        }
        self.inner.state().plan(&plan::key(image, requirements))
    }

    /// Remembers what pip installed for `requirements` in a stateless run
    /// of `image`, as far as the host's own facts bear it out: `served` is
    /// what the index served that run (see [`plan`]).
    pub fn remember(
        &self,
        image: &str,
        requirements: &[String],
        installed: &Installed,
        served: &[String],
    ) {
        if !self.inner.settings.plans || installed.wheels.is_empty() {
            return;
        }
        let key = plan::key(image, requirements);
        let max_bytes = self.inner.settings.sandbox_bytes;
        let remembered =
            self.inner
                .state()
                .remember(key, requirements, &installed.wheels, served, max_bytes);
        if let Err(why) = remembered {
            tracing::info!(requirements = ?requirements, %why, "package index: the install is not planned");
        }
    }
}

impl Site for PackageIndex {
    fn host(&self) -> &str {
        INDEX_HOST
    }

    fn serve(&self, request: Request<Incoming>) -> BoxFuture<'static, Response<Body>> {
        let inner = self.inner.clone();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            if method != Method::GET && method != Method::HEAD {
                return text(StatusCode::METHOD_NOT_ALLOWED, "this index is read only\n");
            }
            inner.serve(&path).await
        })
    }
}

/// Whether `/files/SHA/NAME` names a file as this index lists them: a
/// SHA-256 in hex, a wheel's name of plain characters.
fn plain_file_request(sha: &str, name: &str) -> bool {
    sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && upstream::plain_wheel_name(name)
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn upstream(&self) -> Result<&Upstream, String> {
        self.upstream
            .get_or_try_init(|| Upstream::configure(&self.settings, self.trust.as_ref()))
            .await
    }

    async fn serve(self: Arc<Self>, path: &str) -> Response<Body> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts[..] {
            ["simple"] | [""] => text(
                StatusCode::OK,
                "mcp-code-exec package index: /simple/NAME/\n",
            ),
            ["simple", name] => self.project_page(name).await,
            ["files", sha, name] => self.file(sha, name).await,
            ["why", name] => self.why(name).await,
            _ => text(StatusCode::NOT_FOUND, "not a page of this index\n"),
        }
    }

    /// A project's listing, from memory while fresh, else from upstream
    /// (the last one read when upstream fails).
    async fn listing(&self, name: &str) -> Result<Arc<Listing>, (StatusCode, String)> {
        let Some(name) = requirement::normalized(name) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("{name:?} is not a project name"),
            ));
        };
        let kept = self.state().pages.get(&name).cloned();
        if let Some((read, listing)) = &kept
            && read.elapsed() < PAGE_TTL
        {
            return Ok(listing.clone());
        }
        let upstream = self
            .upstream()
            .await
            .map_err(|error| (StatusCode::BAD_GATEWAY, error))?;
        match upstream.listing(&name).await {
            Ok(listing) => {
                let listing = Arc::new(listing);
                self.state().keep_page(name, listing.clone());
                Ok(listing)
            }
            Err(error) => match kept {
                Some((_, listing)) => {
                    tracing::warn!(project = %name, error = %error.1, "package index: upstream failed; serving the last page read");
                    Ok(listing)
                }
                None => Err(error),
            },
        }
    }

    async fn project_page(&self, name: &str) -> Response<Body> {
        let listing = match self.listing(name).await {
            Ok(listing) => listing,
            Err((status, why)) => return text(status, &format!("{why}\n")),
        };
        let mut page = String::from("<!DOCTYPE html>\n<html><body>\n");
        for file in &listing.wheels {
            page.push_str(&format!(
                "<a href=\"/files/{sha}/{name}#sha256={sha}\"{requires}{yanked}>{name}</a><br>\n",
                sha = file.sha256,
                name = escape(&file.filename),
                requires = file
                    .requires_python
                    .as_deref()
                    .map(|spec| format!(" data-requires-python=\"{}\"", escape(spec)))
                    .unwrap_or_default(),
                yanked = if file.yanked { " data-yanked=\"\"" } else { "" },
            ));
        }
        page.push_str("</body></html>\n");
        let mut response = Response::new(full(page));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response
    }

    /// Why a project cannot be installed from this index, in one line (the
    /// sandbox's installer adds it to pip's error).
    async fn why(&self, name: &str) -> Response<Body> {
        match self.listing(name).await {
            Err((_, why)) => text(StatusCode::OK, &why),
            Ok(listing) if listing.wheels.is_empty() && listing.sdists > 0 => text(
                StatusCode::OK,
                &format!(
                    "{name} has only source distributions on the index ({} of them) and no wheel; \
                     only wheels are installed (nothing is built from source)",
                    listing.sdists
                ),
            ),
            Ok(listing) => text(
                StatusCode::OK,
                &format!(
                    "the index has {} wheels of {name}; none fits the sandbox's Python and platform, \
                     or the versions asked for",
                    listing.wheels.len()
                ),
            ),
        }
    }

    /// A wheel a page of ours listed, under the name it listed: from the
    /// cache, else fetched from upstream (in a task of its own, so a run
    /// that goes away does not waste it), checked and kept.
    async fn file(self: Arc<Self>, sha: &str, name: &str) -> Response<Body> {
        let listed = self.state().files.get(sha).cloned();
        let file = match listed {
            Some(file) if plain_file_request(sha, name) && file.filename == name => file,
            _ => {
                return text(
                    StatusCode::NOT_FOUND,
                    "this index serves the files of the pages it listed, under their names\n",
                );
            }
        };
        let path = self
            .settings
            .cache_dir
            .join(cached_name(&file.sha256, &file.filename));
        if let Some(response) = self.cached(&file, &path).await {
            return response;
        }
        let inner = self.clone();
        let fill = tokio::spawn(async move { inner.fill(&file).await });
        match fill.await {
            Ok(Ok(())) => {}
            Ok(Err((status, error))) => return text(status, &format!("{error}\n")),
            Err(_) => return text(StatusCode::BAD_GATEWAY, "the download failed\n"),
        }
        let listed = self.state().files.get(sha).cloned();
        match listed {
            Some(file) => match self.cached(&file, &path).await {
                Some(response) => response,
                None => text(StatusCode::BAD_GATEWAY, "the wheel could not be kept\n"),
            },
            None => text(StatusCode::BAD_GATEWAY, "the wheel is no longer listed\n"),
        }
    }

    /// Fetches `file` into the cache unless it is there (or being fetched:
    /// then waits for that download).
    async fn fill(&self, file: &UpstreamFile) -> Result<(), (StatusCode, String)> {
        let name = cached_name(&file.sha256, &file.filename);
        loop {
            {
                let mut state = self.state();
                if state.cached.contains_key(&name) {
                    return Ok(());
                }
                if state.filling.insert(name.clone()) {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // However this ends (an error, a panic, the runtime going away), the
        // file is no longer being filled: waiters then try it themselves.
        let _filling = Filling {
            inner: self,
            name: &name,
        };
        tokio::time::timeout(FILL_TIMEOUT, self.download(file, &name))
            .await
            .unwrap_or_else(|_| {
                Err((
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("{}: the download took too long", file.filename),
                ))
            })
    }

    /// Streams `file` from upstream into a temporary file of the cache,
    /// hashing as it goes; renamed into place only when its SHA-256 is the
    /// page's (a temporary left by a failure is removed).
    async fn download(&self, file: &UpstreamFile, name: &str) -> Result<(), (StatusCode, String)> {
        let failed = |error: String| (StatusCode::BAD_GATEWAY, error);
        let _slot = self
            .fills
            .acquire()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let upstream = self.upstream().await.map_err(failed)?;
        let dir = &self.settings.cache_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|error| failed(format!("the package cache {}: {error}", dir.display())))?;
        let mut partial = Partial(Some(
            dir.join(format!(".partial-{}-{name}", std::process::id())),
        ));
        let path = partial.0.clone().expect("just made");
        let size = upstream.download(file, &path).await?;
        if size > self.settings.cache_bytes {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{} is larger than the package cache (MCP_BRIDGE_PACKAGE_CACHE_BYTES)",
                    file.filename
                ),
            ));
        }
        tokio::fs::rename(&path, dir.join(name))
            .await
            .map_err(|error| failed(format!("the package cache: {error}")))?;
        partial.0 = None; // renamed: nothing to remove
        self.account(name, size).await;
        Ok(())
    }

    /// A cached wheel, streamed from its file.
    async fn cached(&self, file: &UpstreamFile, path: &Path) -> Option<Response<Body>> {
        self.scan_once().await;
        let name = cached_name(&file.sha256, &file.filename);
        if !self.state().cached.contains_key(&name) {
            return None;
        }
        let opened = tokio::fs::File::open(path).await.ok()?;
        let size = opened.metadata().await.ok()?.len();
        if let Some(entry) = self.state().cached.get_mut(&name) {
            entry.1 = SystemTime::now();
        }
        let stream = tokio_util::io::ReaderStream::new(opened)
            .map_ok(Frame::data)
            .map_err(|error| Box::new(error) as crate::egress::BoxError);
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        Some(response)
    }

    /// Reads what the cache directory holds, once (the cache outlives the
    /// server); temporaries a crash left are removed.
    async fn scan_once(&self) {
        self.scanned
            .get_or_init(|| async {
                let dir = self.settings.cache_dir.clone();
                let found = tokio::task::spawn_blocking(move || scan(&dir))
                    .await
                    .unwrap_or_default();
                let mut state = self.state();
                for (name, (size, used)) in found {
                    if state.cached.insert(name, (size, used)).is_none() {
                        state.cached_bytes += size;
                    }
                }
            })
            .await;
    }

    /// Counts a wheel just kept, then evicts the least recently used until
    /// the cache is within its bound (never one being fetched).
    async fn account(&self, name: &str, size: u64) {
        let evicted = {
            let mut state = self.state();
            if let Some((old, _)) = state
                .cached
                .insert(name.to_owned(), (size, SystemTime::now()))
            {
                state.cached_bytes -= old;
            }
            state.cached_bytes += size;
            let mut evicted = Vec::new();
            while state.cached_bytes > self.settings.cache_bytes {
                let Some(oldest) = state
                    .cached
                    .iter()
                    .filter(|(other, _)| other.as_str() != name && !state.filling.contains(*other))
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(other, _)| other.clone())
                else {
                    break;
                };
                let (bytes, _) = state.cached.remove(&oldest).expect("just found");
                state.cached_bytes -= bytes;
                evicted.push(oldest);
            }
            evicted
        };
        for name in evicted {
            let _ = tokio::fs::remove_file(self.settings.cache_dir.join(&name)).await;
        }
    }
}

impl State {
    /// Keeps a page and its files, the oldest pages (and their files) going
    /// first past the bounds.
    fn keep_page(&mut self, name: String, listing: Arc<Listing>) {
        if let Some((_, old)) = self.pages.remove(&name) {
            self.forget_files(&old);
        }
        while !self.pages.is_empty()
            && (self.pages.len() >= MAX_PAGES
                || self.files.len() + listing.wheels.len() > MAX_LISTED_FILES)
        {
            let oldest = self
                .pages
                .iter()
                .min_by_key(|(_, (read, _))| *read)
                .map(|(name, _)| name.clone())
                .expect("not empty");
            let (_, old) = self.pages.remove(&oldest).expect("just found");
            self.forget_files(&old);
        }
        for file in listing.wheels.iter().take(MAX_LISTED_FILES) {
            self.files.insert(file.sha256.clone(), file.clone());
        }
        self.pages.insert(name, (Instant::now(), listing));
    }

    fn forget_files(&mut self, listing: &Listing) {
        for file in &listing.wheels {
            self.files.remove(&file.sha256);
        }
    }
}

/// A fill under way: dropped, it is over.
struct Filling<'a> {
    inner: &'a Inner,
    name: &'a str,
}

impl Drop for Filling<'_> {
    fn drop(&mut self) {
        self.inner.state().filling.remove(self.name);
    }
}

/// Where a wheel lives in the cache: its SHA-256, then its name.
fn cached_name(sha256: &str, filename: &str) -> String {
    format!("{sha256}-{filename}")
}

/// A temporary file of the cache, removed unless it was renamed into place
/// (then `None`).
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The cache directory's wheels (named as [`cached_name`] names them):
/// name → size and last modification. Temporaries are removed.
fn scan(dir: &Path) -> HashMap<String, (u64, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    let mut found = HashMap::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if name.starts_with(".partial-") && meta.is_file() {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let ours = name
            .split_once('-')
            .is_some_and(|(sha, wheel)| plain_file_request(sha, wheel));
        if meta.is_file() && ours {
            found.insert(
                name,
                (
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ),
            );
        }
    }
    found
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(full(body.to_owned()));
    *response.status_mut() = status;
    if status != StatusCode::OK {
        crate::egress::give_reason(&mut response, body.trim_end());
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Where the cache lives and which index fills it, for `doctor` (the
/// index without its credentials).
pub fn describe(settings: &PackageSettings) -> String {
    let index = match &settings.index {
        Some(index) => reqwest::Url::parse(index)
            .map(|url| upstream::without_credentials(&url))
            .unwrap_or_default(),
        None => "the host pip's (pip config list), else https://pypi.org/simple".to_owned(),
    };
    format!(
        "cache {} (at most {} MiB), index {index}; each sandbox's package directory {} MiB \
         (MCP_BRIDGE_PACKAGES_BYTES)",
        settings.cache_dir.display(),
        settings.cache_bytes >> 20,
        settings.sandbox_bytes >> 20,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254";

    fn wheel(name: &str, sha: &str) -> UpstreamFile {
        UpstreamFile {
            filename: name.into(),
            url: reqwest::Url::parse("https://index.example/f.whl").unwrap(),
            sha256: sha.into(),
            requires_python: None,
            yanked: false,
        }
    }

    #[test]
    fn file_requests_name_a_listed_wheel_plainly() {
        assert!(plain_file_request(SHA, "six-1.16.0-py2.py3-none-any.whl"));
        for (sha, name) in [
            (&SHA[1..], "six-1.16.0-py2.py3-none-any.whl"),
            (&SHA.to_uppercase()[..], "six-1.16.0-py2.py3-none-any.whl"),
            (SHA, "../six.whl"),
            (SHA, ".partial-six.whl"),
            (SHA, "six.tar.gz"),
            (SHA, "six%2F.whl"),
            (SHA, &format!("{}.whl", "a".repeat(300))),
        ] {
            assert!(!plain_file_request(sha, name), "{sha} {name}");
        }
    }

    #[test]
    fn pages_and_their_files_stay_within_bounds() {
        let mut state = State::default();
        let page = |n: usize| {
            Arc::new(Listing {
                wheels: (0..n)
                    .map(|i| wheel(&format!("p-{i}-py3-none-any.whl"), &format!("{i:064x}")))
                    .collect(),
                sdists: 0,
            })
        };
        for i in 0..MAX_PAGES + 10 {
            state.keep_page(format!("p{i}"), page(1));
        }
        assert_eq!(state.pages.len(), MAX_PAGES);
        // Pages listing many files push out the oldest, and their files go too.
        state.keep_page("big".into(), page(MAX_LISTED_FILES - 5));
        assert!(
            state.files.len() <= MAX_LISTED_FILES,
            "{}",
            state.files.len()
        );
        assert!(state.pages.contains_key("big"));
        // A page read again replaces its files.
        state.keep_page("big".into(), page(3));
        assert!(state.files.len() <= MAX_PAGES + 3, "{}", state.files.len());
    }

    #[test]
    fn doctor_shows_the_index_without_its_credentials() {
        let settings = PackageSettings {
            index: Some("https://user:s3cret@artifactory.example/api/pypi/simple".into()),
            ..PackageSettings::default()
        };
        let shown = describe(&settings);
        assert!(
            shown.contains("https://artifactory.example/api/pypi/simple"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("user"),
            "{shown}"
        );
    }
}
