//! The upstream index the cache is filled from: its URL and TLS trust (the
//! operator's, else what the host's pip is configured with), its project
//! pages (PEP 691 JSON, or PEP 503 HTML), and downloads of the files they
//! list. Only the host talks to it, never a sandbox.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use reqwest::Url;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::config::{CaBundle, PackageSettings};

/// The index when neither the operator nor the host's pip names one.
const DEFAULT_INDEX: &str = "https://pypi.org/simple";
/// Where the host keeps its trust when pip names none (Debian's bundle).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// A project page, at most.
const MAX_PAGE_BYTES: usize = 32 << 20;
/// Reading pip's own configuration.
const PIP_CONFIG_TIMEOUT: Duration = Duration::from_secs(20);

/// A wheel an upstream page lists.
#[derive(Debug, Clone)]
pub(super) struct UpstreamFile {
    pub filename: String,
    pub url: Url,
    pub sha256: String,
    pub requires_python: Option<String>,
    pub yanked: bool,
}

/// A project page: its wheels (with a SHA-256), and how many source
/// distributions it has (which are never installed).
#[derive(Debug, Default)]
pub(super) struct Listing {
    pub wheels: Vec<UpstreamFile>,
    pub sdists: usize,
}

#[derive(Debug)]
pub(super) struct Upstream {
    index: Url,
    /// The index as messages and logs show it: without its credentials.
    shown: String,
    client: reqwest::Client,
    /// The largest file fetched (a wheel larger than the sandbox's package
    /// directory could not be installed anyway).
    max_file_bytes: u64,
}

/// What the host's pip is configured with (`pip config list`).
#[derive(Debug, Default)]
struct PipConfig {
    index_url: Option<String>,
    cert: Option<String>,
}

impl Upstream {
    /// The index and a client that trusts `trust` (else pip's bundle, else
    /// the system's), read at first use.
    pub async fn configure(
        settings: &PackageSettings,
        trust: Option<&CaBundle>,
    ) -> Result<Self, String> {
        let pip = pip_config().await?;
        let index = settings
            .index
            .clone()
            .or(pip.index_url)
            .unwrap_or_else(|| DEFAULT_INDEX.to_owned());
        let index = Url::parse(&format!("{}/", index.trim_end_matches('/'))).map_err(|_| {
            "the package index is not a URL (MCP_BRIDGE_PACKAGE_INDEX, or pip's index-url)"
                .to_owned()
        })?;
        let shown = without_credentials(&index);
        let pem = match (trust, pip.cert) {
            (Some(bundle), _) => bundle.pem.clone().into_bytes(),
            (None, Some(cert)) => std::fs::read(&cert).map_err(|error| {
                format!("the CA bundle the host's pip names ({cert}) cannot be read: {error}")
            })?,
            (None, None) => std::fs::read(SYSTEM_BUNDLE).map_err(|error| {
                format!(
                    "no CA bundle for the package index ({SYSTEM_BUNDLE}: {error}); set MCP_BRIDGE_CA_BUNDLE"
                )
            })?,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err("the CA bundle for the package index holds no certificate".into());
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("mcp-code-exec/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("the package index client: {}", error.without_url()))?;
        tracing::info!(index = %shown, "package index: upstream configured");
        Ok(Self {
            index,
            shown,
            client,
            max_file_bytes: settings.sandbox_bytes,
        })
    }

    /// The project page of `name` (normalized).
    pub async fn listing(&self, name: &str) -> Result<Listing, (StatusCode, String)> {
        let url = self.index.join(&format!("{name}/")).map_err(|_| {
            (
                StatusCode::NOT_FOUND,
                format!("{name:?} is not a project name"),
            )
        })?;
        let failed = |error: String| {
            (
                StatusCode::BAD_GATEWAY,
                format!("the package index {}: {error}", self.shown),
            )
        };
        let response = self
            .client
            .get(url.clone())
            .header(
                "accept",
                "application/vnd.pypi.simple.v1+json, text/html;q=0.1",
            )
            .send()
            .await
            .map_err(|error| failed(error.without_url().to_string()))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no project {name:?} on the package index {}", self.shown),
            ));
        }
        if !response.status().is_success() {
            return Err(failed(format!("{} for {name}", response.status())));
        }
        let json = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.contains("json"));
        let page = bounded_body(response, MAX_PAGE_BYTES as u64)
            .await
            .map_err(failed)?;
        // Pages of a few MiB: parsed off the runtime.
        let parsed = tokio::task::spawn_blocking(move || {
            let page = String::from_utf8_lossy(&page);
            if json {
                parse_json(&page, &url).map_err(|error| error.to_string())
            } else {
                Ok(parse_html(&page, &url))
            }
        })
        .await
        .map_err(|error| failed(error.to_string()))?;
        parsed.map_err(|error| failed(format!("a page that is not PEP 691 JSON: {error}")))
    }

    /// Streams `file` into `path` (a new file), hashing as it goes; its
    /// size, once its SHA-256 is the one its page gave. A file refused for
    /// what it is (not its hash, too large) is a 4xx, which pip shows and
    /// does not retry; the index or the cache failing is a 502.
    pub async fn download(
        &self,
        file: &UpstreamFile,
        path: &std::path::Path,
    ) -> Result<u64, (StatusCode, String)> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let name = &file.filename;
        let failed = |error: String| (StatusCode::BAD_GATEWAY, error);
        let mut response = self
            .client
            .get(file.url.clone())
            .send()
            .await
            .map_err(|error| failed(format!("{name}: {}", error.without_url())))?;
        if !response.status().is_success() {
            return Err(failed(format!(
                "{name}: the package index answered {}",
                response.status()
            )));
        }
        let mut out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await
            .map_err(|error| failed(format!("the package cache: {error}")))?;
        let mut hash = sha2::Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| failed(format!("{name}: {}", error.without_url())))?
        {
            size += chunk.len() as u64;
            if size > self.max_file_bytes {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "{name} is larger than the sandbox's package directory (MCP_BRIDGE_PACKAGES_BYTES)"
                    ),
                ));
            }
            hash.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|error| failed(format!("the package cache: {error}")))?;
        }
        out.flush()
            .await
            .map_err(|error| failed(format!("the package cache: {error}")))?;
        let actual = hex::encode(hash.finalize());
        if actual != file.sha256 {
            tracing::warn!(file = %name, expected = %file.sha256, %actual, "package index: a download did not match its hash; not kept");
            return Err((
                StatusCode::CONFLICT,
                format!("{name} did not match the SHA-256 its page gave; not kept"),
            ));
        }
        Ok(size)
    }
}

/// `index` without user name and password (what messages and logs show).
pub(super) fn without_credentials(index: &Url) -> String {
    let mut shown = index.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A wheel's file name of plain characters: what the index lists and
/// serves; short enough that its cache name and temporary name (its
/// SHA-256 and a prefix before it) stay within a file name's 255 bytes.
pub(super) fn plain_wheel_name(name: &str) -> bool {
    (6..=160).contains(&name.len())
        && name.ends_with(".whl")
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'!'))
}

async fn bounded_body(mut response: reqwest::Response, max: u64) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| error.without_url().to_string())?
    {
        if (data.len() + chunk.len()) as u64 > max {
            return Err(format!("larger than {max} bytes"));
        }
        data.extend_from_slice(&chunk);
    }
    Ok(data)
}

/// `pip config list` of the host's `python3`: its index and CA bundle;
/// nothing when there is no python3 or no pip. It runs in `/` with
/// `PYTHONSAFEPATH`, never from the working directory: that is the
/// repository the client opened, and a `pip/` there would run on the host.
async fn pip_config() -> Result<PipConfig, String> {
    let output = tokio::time::timeout(
        PIP_CONFIG_TIMEOUT,
        tokio::process::Command::new("python3")
            .args(["-m", "pip", "config", "list"])
            .current_dir("/")
            .env("PYTHONSAFEPATH", "1")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| {
        "the host's pip did not say its configuration in time (pip config list)".to_owned()
    })?;
    match output {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(PipConfig::default()),
        Err(error) => Err(format!(
            "the host's pip configuration (pip config list): {error}"
        )),
        Ok(output) if output.status.success() => {
            Ok(parse_pip_config(&String::from_utf8_lossy(&output.stdout)))
        }
        Ok(output) if String::from_utf8_lossy(&output.stderr).contains("No module named pip") => {
            Ok(PipConfig::default())
        }
        Ok(output) => Err(format!(
            "the host's pip configuration (pip config list) failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
    }
}

/// Lines like `global.index-url='https://…'`; `:env:` (PIP_* variables)
/// wins over `install`, which wins over `global`.
fn parse_pip_config(text: &str) -> PipConfig {
    let rank = |section: &str| match section {
        ":env:" => 3,
        "install" | "download" => 2,
        "global" => 1,
        _ => 0,
    };
    let mut best: [(u8, Option<String>); 2] = [(0, None), (0, None)];
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let Some((section, name)) = key.rsplit_once('.') else {
            continue;
        };
        let slot = match name {
            "index-url" => 0,
            "cert" => 1,
            _ => continue,
        };
        let value = value.trim().trim_matches('\'').trim_matches('"').to_owned();
        let rank = rank(section);
        if rank > best[slot].0 && !value.is_empty() {
            best[slot] = (rank, Some(value));
        }
    }
    let [(_, index_url), (_, cert)] = best;
    PipConfig { index_url, cert }
}

#[derive(Deserialize)]
struct JsonPage {
    files: Vec<JsonFile>,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    #[serde(default)]
    hashes: std::collections::HashMap<String, String>,
    #[serde(rename = "requires-python", default)]
    requires_python: Option<String>,
    #[serde(default)]
    yanked: serde_json::Value,
}

fn parse_json(page: &str, base: &Url) -> Result<Listing, serde_json::Error> {
    let page: JsonPage = serde_json::from_str(page)?;
    let mut listing = Listing::default();
    for file in page.files {
        let yanked = !matches!(
            file.yanked,
            serde_json::Value::Bool(false) | serde_json::Value::Null
        );
        let sha256 = file.hashes.get("sha256").cloned();
        listing.add(
            base,
            &file.filename,
            &file.url,
            sha256,
            file.requires_python,
            yanked,
        );
    }
    Ok(listing)
}

/// The anchors of a PEP 503 page: `<a href="URL#sha256=…"
/// data-requires-python="…" data-yanked>FILENAME</a>`.
fn parse_html(page: &str, base: &Url) -> Listing {
    let mut listing = Listing::default();
    let lower = page.to_ascii_lowercase();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<a ").map(|i| at + i) {
        let Some(tag_end) = lower[start..].find('>').map(|i| start + i) else {
            break;
        };
        let Some(text_end) = lower[tag_end..].find("</a>").map(|i| tag_end + i) else {
            break;
        };
        let tag = &page[start..tag_end];
        let filename = unescape(page[tag_end + 1..text_end].trim());
        at = text_end;
        let Some(href) = attribute(tag, "href") else {
            continue;
        };
        let (href, fragment) = href.split_once('#').unwrap_or((&href, ""));
        let sha256 = fragment.strip_prefix("sha256=").map(str::to_owned);
        let yanked = attribute(tag, "data-yanked").is_some() || tag.contains(" data-yanked");
        listing.add(
            base,
            &filename,
            href,
            sha256,
            attribute(tag, "data-requires-python"),
            yanked,
        );
    }
    listing
}

impl Listing {
    fn add(
        &mut self,
        base: &Url,
        filename: &str,
        url: &str,
        sha256: Option<String>,
        requires_python: Option<String>,
        yanked: bool,
    ) {
        if !filename.ends_with(".whl") {
            if filename.ends_with(".tar.gz") || filename.ends_with(".zip") {
                self.sdists += 1;
            }
            return;
        }
        let valid_hash = sha256
            .map(|hash| hash.to_ascii_lowercase())
            .filter(|hash| hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
        let url = base
            .join(url)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http"));
        let (Some(sha256), Some(url), true) = (valid_hash, url, plain_wheel_name(filename)) else {
            // Without a hash the host could not check it; a name of other
            // characters, or a URL of another scheme, is never served.
            return;
        };
        self.wheels.push(UpstreamFile {
            filename: filename.to_owned(),
            url,
            sha256,
            requires_python,
            yanked,
        });
    }
}

/// The value of `name="…"` (or `'…'`) in a tag, unescaped.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find(name).map(|i| from + i) {
        from = at + name.len();
        let before_ok = at > 0 && lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let value_at = tag.len() - rest.len() + 1;
        let value = tag[value_at..].trim_start();
        let quote = value.chars().next()?;
        if quote == '"' || quote == '\'' {
            let end = value[1..].find(quote)?;
            return Some(unescape(&value[1..1 + end]));
        }
        let end = value
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(value.len());
        return Some(unescape(&value[..end]));
    }
    None
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://index.example/simple/six/").unwrap()
    }

    const SHA: &str = "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254";

    #[test]
    fn html_pages_list_hashed_wheels_and_count_sdists() {
        let page = format!(
            r#"<html><body>
<a href="../../files/six-1.16.0-py2.py3-none-any.whl#sha256={SHA}" data-requires-python="&gt;=2.7, !=3.0.*">six-1.16.0-py2.py3-none-any.whl</a><br>
<A HREF='https://cdn.example/six-1.15.0-py2.py3-none-any.whl#sha256={SHA}' data-yanked="">six-1.15.0-py2.py3-none-any.whl</A>
<a href="six-1.16.0.tar.gz#sha256={SHA}">six-1.16.0.tar.gz</a>
<a href="six-1.14.0-py2.py3-none-any.whl">six-1.14.0-py2.py3-none-any.whl</a>
</body></html>"#
        );
        let listing = parse_html(&page, &base());
        assert_eq!(listing.sdists, 1);
        assert_eq!(
            listing.wheels.len(),
            2,
            "the wheel without a hash is left out"
        );
        let first = &listing.wheels[0];
        assert_eq!(
            first.url.as_str(),
            "https://index.example/files/six-1.16.0-py2.py3-none-any.whl"
        );
        assert_eq!(first.requires_python.as_deref(), Some(">=2.7, !=3.0.*"));
        assert!(!first.yanked && listing.wheels[1].yanked);
        assert_eq!(listing.wheels[1].url.host_str(), Some("cdn.example"));
    }

    #[test]
    fn json_pages_are_read_too() {
        let page = format!(
            r#"{{"meta": {{"api-version": "1.1"}}, "name": "six", "files": [
            {{"filename": "six-1.16.0-py2.py3-none-any.whl", "url": "/f/six.whl", "hashes": {{"sha256": "{SHA}"}}, "requires-python": ">=2.7", "yanked": false}},
            {{"filename": "six-1.0.whl", "url": "/f/old.whl", "hashes": {{"sha256": "{SHA}"}}, "yanked": "broken"}},
            {{"filename": "six-1.16.0.tar.gz", "url": "/f/six.tgz", "hashes": {{}}}}]}}"#
        );
        let listing = parse_json(&page, &base()).unwrap();
        assert_eq!((listing.wheels.len(), listing.sdists), (2, 1));
        assert_eq!(
            listing.wheels[0].url.as_str(),
            "https://index.example/f/six.whl"
        );
        assert!(!listing.wheels[0].yanked && listing.wheels[1].yanked);
    }

    #[test]
    fn pip_config_environment_wins() {
        let config = parse_pip_config(
            ":env:.cert='/etc/ssl/certs/ca-certificates.crt'\n\
             global.cert='/other.pem'\n\
             global.index-url='https://mirror.example/simple'\n\
             :env:.find-links='/opt/wheels'\n",
        );
        assert_eq!(
            config.cert.as_deref(),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        assert_eq!(
            config.index_url.as_deref(),
            Some("https://mirror.example/simple")
        );
    }
}
