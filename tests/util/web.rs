//! Real HTTP and HTTPS servers on the host's loopback, for the egress
//! tests: a CA made at test time (its PEM is what the sandbox is told to
//! trust), one server speaking plain HTTP and one speaking TLS with a
//! certificate for `localhost` and `127.0.0.1` signed by that CA, the same
//! routes on both. Each counts the connections it holds open, so a test can
//! see a sandbox's connection close.
//!
//! Routes: `/hello`, `/data.csv`, `/bytes/{n}` (n bytes, streamed),
//! `/hold` (one byte every 100 ms until the client goes), `/redirect/{url}`
//! (a 302 to `http://{url}`), `/simple/{package}/` and `/files/{wheel}` (a
//! PEP 503 index of the wheels in a folder; `NAME.corrupt` beside a wheel is
//! served in its place, under the hash of the real one), and any other path echoes the
//! request's `Host` header.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::stream;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What every route shares.
#[derive(Clone)]
struct Shared {
    /// Responses being sent (a `/hold` lives until its client goes).
    open: Arc<AtomicUsize>,
    /// Files of the index sent.
    downloads: Arc<AtomicUsize>,
    wheels: Option<PathBuf>,
}

/// Both servers and what they saw.
pub struct WebServers {
    pub http_port: u16,
    pub https_port: u16,
    /// The CA the HTTPS server's certificate is signed by, as PEM.
    pub ca_pem: String,
    open: Arc<AtomicUsize>,
    downloads: Arc<AtomicUsize>,
}

impl WebServers {
    /// Files of the package index sent, on either server.
    pub fn downloads(&self) -> usize {
        self.downloads.load(Ordering::SeqCst)
    }

    /// Responses being sent right now, on either server.
    pub fn open_responses(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// `localhost:HTTP_PORT,localhost:HTTPS_PORT`, for MCP_BRIDGE_ALLOW_HOSTS.
    pub fn allow_hosts(&self) -> String {
        format!("localhost:{},localhost:{}", self.http_port, self.https_port)
    }
}

/// Counts a response as open until its body is dropped (sent, or its client gone).
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/hello", get(|| async { "hello from the test server\n" }))
        .route("/data.csv", get(|| async { "a,b\n1,2\n3,4\n" }))
        .route("/bytes/{n}", get(bytes))
        .route("/hold", get(hold))
        .route("/redirect/{*url}", get(redirect))
        .route("/simple/{package}/", get(index))
        .route("/files/{wheel}", get(wheel))
        .fallback(|headers: HeaderMap| async move {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            format!("host: {host}\n")
        })
        .with_state(shared)
}

async fn bytes(State(shared): State<Shared>, Path(n): Path<usize>) -> Response {
    let open = Open::new(&shared.open);
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = stream::unfold((n, open), move |(left, open)| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK);
            Some((
                Ok::<_, std::io::Error>(chunk.slice(..take)),
                (left - take, open),
            ))
        }
    });
    (
        [(header::CONTENT_LENGTH, n.to_string())],
        Body::from_stream(chunks),
    )
        .into_response()
}

async fn hold(State(shared): State<Shared>) -> Response {
    let open = Open::new(&shared.open);
    let ticks = stream::unfold(open, |open| async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(b".")), open))
    });
    Body::from_stream(ticks).into_response()
}

async fn redirect(Path(url): Path<String>) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("http://{url}"))],
    )
        .into_response()
}

async fn index(State(shared): State<Shared>, Path(package): Path<String>) -> Response {
    let Some(folder) = &shared.wheels else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let prefix = package.replace('-', "_").to_lowercase();
    let mut links = String::from("<!DOCTYPE html><html><body>\n");
    let mut listed = 0;
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let distribution = name.ends_with(".whl") || name.ends_with(".tar.gz");
        if name.to_lowercase().starts_with(&format!("{prefix}-")) && distribution {
            let sha = hex::encode(Sha256::digest(std::fs::read(entry.path()).unwrap()));
            links.push_str(&format!(
                "<a href=\"/files/{name}#sha256={sha}\">{name}</a>\n"
            ));
            listed += 1;
        }
    }
    links.push_str("</body></html>\n");
    if listed == 0 {
        return StatusCode::NOT_FOUND.into_response(); // as PyPI answers for no such project
    }
    ([(header::CONTENT_TYPE, "text/html")], links).into_response()
}

async fn wheel(State(shared): State<Shared>, Path(name): Path<String>) -> Response {
    match shared.wheels.as_ref().map(|folder| {
        // A test's corrupted copy, served under the listed name.
        std::fs::read(folder.join(format!("{name}.corrupt")))
            .or_else(|_| std::fs::read(folder.join(&name)))
    }) {
        Some(Ok(bytes)) if !name.contains('/') => {
            shared.downloads.fetch_add(1, Ordering::SeqCst);
            bytes.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Wheels for the local package index (scripts/test.sh downloads them with
/// the host's pip).
pub fn wheels() -> PathBuf {
    std::env::var_os("MCP_CODE_EXEC_TEST_WHEELS").map_or_else(
        || concat!(env!("CARGO_MANIFEST_DIR"), "/target/e2e-wheels").into(),
        PathBuf::from,
    )
}

/// Starts both servers on the host's loopback (random ports), serving the
/// wheels of `wheels` as a package index if given.
pub async fn start(wheels: Option<PathBuf>) -> WebServers {
    let open = Arc::new(AtomicUsize::new(0));
    let downloads = Arc::new(AtomicUsize::new(0));
    let app = router(Shared {
        open: open.clone(),
        downloads: downloads.clone(),
        wheels,
    });
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (http_port, https_port) = (
        http.local_addr().unwrap().port(),
        https.local_addr().unwrap().port(),
    );
    let plain = app.clone();
    tokio::spawn(async move { axum::serve(http, plain).await.unwrap() });
    let (ca_pem, tls) = tls_config();
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = https.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    WebServers {
        http_port,
        https_port,
        ca_pem,
        open,
        downloads,
    }
}

/// A CA made now, and a server configuration with a certificate it signed
/// for `localhost` and `127.0.0.1`.
fn tls_config() -> (String, ServerConfig) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mcp-code-exec test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    // Python 3.13 verifies strictly (VERIFY_X509_STRICT): a leaf names its issuer's key.
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
    let config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    (ca.pem(), config)
}
