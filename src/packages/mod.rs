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

pub mod requirement;
mod upstream;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::config::{CaBundle, PackageSettings};
use crate::egress::{Body, Site};
use upstream::{Listing, Upstream, UpstreamFile};

/// The name sandboxes reach the index under (`.invalid` never resolves).
pub const INDEX_HOST: &str = "packages.mcp-code-exec.invalid";
/// How long a project's page is served from memory before it is read again.
const PAGE_TTL: Duration = Duration::from_secs(10 * 60);
/// Project pages kept in memory.
const MAX_PAGES: usize = 1024;

/// The index; cheap to clone (one shared state).
#[derive(Debug, Clone)]
pub struct PackageIndex {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: PackageSettings,
    trust: Option<CaBundle>,
    upstream: tokio::sync::OnceCell<Result<Upstream, String>>,
    /// The cache directory has been read.
    scanned: tokio::sync::OnceCell<()>,
    state: Mutex<State>,
    /// One download per file at a time.
    fills: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
                fills: tokio::sync::Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Site for PackageIndex {
    fn host(&self) -> &str {
        INDEX_HOST
    }

    fn serve(&self, request: Request<Incoming>) -> BoxFuture<'static, Response<Body>> {
        let inner = self.inner.clone();
        Box::pin(async move { inner.serve(request.uri().path()).await })
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn upstream(&self) -> Result<&Upstream, String> {
        self.upstream
            .get_or_init(|| Upstream::configure(&self.settings, self.trust.as_ref()))
            .await
            .as_ref()
            .map_err(Clone::clone)
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
                let mut state = self.state();
                for file in &listing.wheels {
                    state.files.insert(file.sha256.clone(), file.clone());
                }
                if state.pages.len() >= MAX_PAGES {
                    state.pages.retain(|_, (read, _)| read.elapsed() < PAGE_TTL);
                }
                if state.pages.len() < MAX_PAGES {
                    state.pages.insert(name, (Instant::now(), listing.clone()));
                }
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

    /// A wheel, from the cache, else fetched from upstream, checked and kept.
    async fn file(&self, sha: &str, name: &str) -> Response<Body> {
        let plain = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
        let safe_name = name.ends_with(".whl")
            && !name.starts_with('.')
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'!')
            });
        if !plain || !safe_name {
            return text(StatusCode::NOT_FOUND, "not a file of this index\n");
        }
        let cached_name = format!("{sha}-{name}");
        let path = self.settings.cache_dir.join(&cached_name);
        if let Some(response) = self.cached(&cached_name, &path).await {
            return response;
        }
        let Some(file) = self.state().files.get(sha).cloned() else {
            return text(
                StatusCode::NOT_FOUND,
                "this index serves the files of the pages it listed\n",
            );
        };
        let lock = {
            let mut fills = self.fills.lock().await;
            fills.entry(sha.to_owned()).or_default().clone()
        };
        let _filling = lock.lock().await;
        if let Some(response) = self.cached(&cached_name, &path).await {
            return response;
        }
        let fetched = match self.upstream().await {
            Ok(upstream) => upstream.download(&file).await,
            Err(error) => Err(error),
        };
        let data = match fetched {
            Ok(data) => data,
            Err(error) => return text(StatusCode::BAD_GATEWAY, &format!("{error}\n")),
        };
        let actual = hex::encode(Sha256::digest(&data));
        if actual != file.sha256 {
            tracing::warn!(file = %file.filename, expected = %file.sha256, %actual, "package index: a download did not match its hash; not kept");
            return text(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "{} did not match the SHA-256 the index gave for it; not kept\n",
                    file.filename
                ),
            );
        }
        if let Err(error) = self.keep(&cached_name, &path, &data).await {
            tracing::warn!(file = %file.filename, %error, "package index: could not keep a wheel in the cache");
        }
        wheel(Bytes::from(data))
    }

    async fn cached(&self, cached_name: &str, path: &Path) -> Option<Response<Body>> {
        self.scan_once().await;
        if !self.state().cached.contains_key(cached_name) {
            return None;
        }
        let data = tokio::fs::read(path).await.ok()?;
        if let Some(entry) = self.state().cached.get_mut(cached_name) {
            entry.1 = SystemTime::now();
        }
        Some(wheel(Bytes::from(data)))
    }

    /// Reads what the cache directory holds, once (the cache outlives the server).
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

    /// Writes a checked wheel into the cache (a temporary name, then a
    /// rename: a reader never sees half a file), then evicts the least
    /// recently used until the cache is within its bound.
    async fn keep(&self, cached_name: &str, path: &Path, data: &[u8]) -> std::io::Result<()> {
        let size = data.len() as u64;
        if size > self.settings.cache_bytes {
            return Ok(());
        }
        tokio::fs::create_dir_all(&self.settings.cache_dir).await?;
        let partial = self
            .settings
            .cache_dir
            .join(format!(".partial-{}-{cached_name}", std::process::id()));
        tokio::fs::write(&partial, data).await?;
        tokio::fs::rename(&partial, path).await?;
        let evicted = {
            let mut state = self.state();
            if let Some((old, _)) = state
                .cached
                .insert(cached_name.to_owned(), (size, SystemTime::now()))
            {
                state.cached_bytes -= old;
            }
            state.cached_bytes += size;
            let mut evicted = Vec::new();
            while state.cached_bytes > self.settings.cache_bytes {
                let Some(oldest) = state
                    .cached
                    .iter()
                    .filter(|(name, _)| name.as_str() != cached_name)
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(name, _)| name.clone())
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
        Ok(())
    }
}

/// The cache directory's wheels: name → size and last modification.
fn scan(dir: &Path) -> HashMap<String, (u64, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let meta = entry.metadata().ok()?;
            (meta.is_file() && name.ends_with(".whl") && !name.starts_with('.')).then(|| {
                (
                    name,
                    (
                        meta.len(),
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    ),
                )
            })
        })
        .collect()
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
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn wheel(data: Bytes) -> Response<Body> {
    let mut response = Response::new(full(data));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Where the cache lives, for `doctor`.
pub fn describe(settings: &PackageSettings) -> String {
    format!(
        "cache {} (at most {} MiB), index {}",
        settings.cache_dir.display(),
        settings.cache_bytes >> 20,
        settings
            .index
            .as_deref()
            .unwrap_or("the host pip's (pip config list), else https://pypi.org/simple")
    )
}
