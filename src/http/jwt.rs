//! JWT access tokens of an external OAuth authorization server: who a
//! bearer token that is no tokens-file token belongs to.
//!
//! Owns the verification of a token (`jsonwebtoken`: signature, `iss`,
//! `aud` = this server's URL as RFC 8707 asks, `exp` and `nbf` with
//! [`LEEWAY`]; only the asymmetric algorithms of
//! `MCP_BRIDGE_HTTP_JWT_ALGORITHMS`, never `none` nor HMAC, and a key is
//! used only for its own family and its JWK's `alg`), the issuer's key set
//! (fetched from `MCP_BRIDGE_HTTP_JWT_JWKS_URL`, bounded in size and
//! count, cached, fetched anew when a token names an unknown `kid` or the
//! keys are [`MAX_KEY_AGE`] old, but at most once per [`REFETCH_AFTER`]
//! whatever clients send), and the principal named by the configured
//! claim (`jwt:` and its value: no tokens-file name has a `:`). It knows
//! nothing of MCP nor of HTTP requests: [`super::auth`] calls it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use tokio::time::Instant;

use crate::config::{CaBundle, JwtSettings};
use crate::principals::Principal;

/// Clock skew allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 30;
/// The least time between two fetches of the key set: a client sending
/// tokens with made-up `kid`s costs the issuer one request per this.
pub const REFETCH_AFTER: Duration = Duration::from_secs(5);
/// Keys older than this are fetched anew before the next token is checked
/// (a key the issuer withdrew stops being trusted).
pub const MAX_KEY_AGE: Duration = Duration::from_secs(15 * 60);
/// The largest key set read.
pub const MAX_JWKS_BYTES: usize = 256 << 10;
/// The most keys kept of a key set.
pub const MAX_KEYS: usize = 64;
/// How long one fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Where the host's CA bundle is, when `MCP_BRIDGE_CA_BUNDLE` is not set.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why JWT verification cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("MCP_BRIDGE_HTTP_JWT_JWKS_URL: {0}")]
pub struct JwtError(String);

/// One key of the issuer's set.
#[derive(Debug)]
struct Key {
    key: DecodingKey,
    /// The JWK's `alg`, when it names one: the only algorithm it serves.
    alg: Option<Algorithm>,
}

/// The issuer's keys by `kid` (a key without one is kept under "").
#[derive(Debug, Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    /// When they were fetched; `None`: never.
    fetched: Option<Instant>,
}

/// Checks JWT access tokens of one issuer.
#[derive(Debug)]
pub struct JwtVerifier {
    settings: JwtSettings,
    client: reqwest::Client,
    keys: RwLock<Keys>,
    /// Held while fetching (one fetch at a time); when the last one began.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl JwtVerifier {
    /// A verifier whose key-set client trusts `trust` (`MCP_BRIDGE_CA_BUNDLE`),
    /// else the host's CA bundle. Keys are fetched at the first token.
    pub fn new(settings: &JwtSettings, trust: Option<&CaBundle>) -> Result<Arc<Self>, JwtError> {
        let pem = match trust {
            Some(bundle) => bundle.pem.clone().into_bytes(),
            None => std::fs::read(SYSTEM_BUNDLE).map_err(|error| {
                JwtError(format!(
                    "no CA bundle to check the issuer with ({SYSTEM_BUNDLE}: {error}); set MCP_BRIDGE_CA_BUNDLE"
                ))
            })?,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| JwtError(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mcp-code-exec/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| JwtError(error.without_url().to_string()))?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            client,
            keys: RwLock::default(),
            fetching: tokio::sync::Mutex::new(None),
        }))
    }

    /// The issuer, for the protected-resource metadata.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// The principal of a valid token, or why it is not valid (to log:
    /// it never holds the token).
    pub async fn verify(&self, token: &str) -> Result<Principal, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|error| format!("not a JWT: {error}"))?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(format!(
                "algorithm {:?} is not accepted (MCP_BRIDGE_HTTP_JWT_ALGORITHMS)",
                header.alg
            ));
        }
        let kid = header.kid.unwrap_or_default();
        if self.stale() {
            self.refresh().await;
        }
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refresh().await;
                self.key(&kid)
                    .ok_or_else(|| format!("no key of the issuer has kid {kid:?}"))?
            }
        };
        if key.alg.is_some_and(|alg| alg != header.alg) || key.key.family() != family(header.alg) {
            return Err(format!("key {kid:?} is not for {:?}", header.alg));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key.key,
            &validation,
        )
        .map_err(|error| format!("refused: {error}"))?
        .claims;
        let name = match claims.get(&self.settings.principal_claim) {
            Some(serde_json::Value::String(name)) => name.clone(),
            Some(serde_json::Value::Number(number)) => number.to_string(),
            _ => {
                return Err(format!(
                    "no {:?} claim (MCP_BRIDGE_HTTP_JWT_PRINCIPAL_CLAIM) naming the principal",
                    self.settings.principal_claim
                ));
            }
        };
        Principal::external("jwt", &name)
    }

    fn key(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys
            .read()
            .expect("never poisoned")
            .by_kid
            .get(kid)
            .cloned()
    }

    fn stale(&self) -> bool {
        let keys = self.keys.read().expect("never poisoned");
        keys.fetched.is_none_or(|at| at.elapsed() >= MAX_KEY_AGE)
    }

    /// Fetches the key set, unless a fetch began less than
    /// [`REFETCH_AFTER`] ago (then the keys stay as they are). A fetch that
    /// fails keeps the keys there were.
    async fn refresh(&self) {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFETCH_AFTER) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(by_kid) => {
                tracing::info!(keys = by_kid.len(), "JWT: issuer's key set fetched");
                *self.keys.write().expect("never poisoned") = Keys {
                    by_kid,
                    fetched: Some(Instant::now()),
                };
            }
            Err(error) => tracing::warn!(%error, "JWT: the issuer's key set could not be fetched"),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let mut response = self
            .client
            .get(&self.settings.jwks_url)
            .send()
            .await
            .map_err(|error| error.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| error.without_url().to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the key set is over {} KiB", MAX_JWKS_BYTES >> 10));
            }
            body.extend_from_slice(&chunk);
        }
        let set: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| format!("not JSON: {error}"))?;
        let listed = set
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or("no \"keys\" array")?;
        let mut by_kid = HashMap::new();
        for entry in listed {
            if by_kid.len() == MAX_KEYS {
                tracing::warn!(
                    max = MAX_KEYS,
                    "JWT: the key set has more keys; the rest are ignored"
                );
                break;
            }
            match usable(entry) {
                Some((kid, key)) => {
                    by_kid.insert(kid, Arc::new(key));
                }
                None => tracing::debug!("JWT: a key that is no public signing key is ignored"),
            }
        }
        Ok(by_kid)
    }
}

/// A public signing key of the set, with its `kid`: never a symmetric
/// (`oct`) key, nor one marked for encryption.
fn usable(entry: &serde_json::Value) -> Option<(String, Key)> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).ok()?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
        || jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    if key.family() == AlgorithmFamily::Hmac {
        return None;
    }
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(alg) => Some(alg.to_string().parse::<Algorithm>().ok()?),
    };
    Some((jwk.common.key_id.unwrap_or_default(), Key { key, alg }))
}

/// The key family an algorithm signs with.
fn family(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => AlgorithmFamily::Rsa,
    }
}
