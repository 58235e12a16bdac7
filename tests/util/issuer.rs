//! A real OAuth authorization server's key side on the host's loopback,
//! for the JWT tests: ES256 keys made at test time (rcgen), their JSON Web
//! Key Set served at `/jwks` (what it publishes can change: key rotation),
//! the fetches counted, and access tokens signed with `jsonwebtoken`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The issuer every good token names.
pub const ISSUER: &str = "https://issuer.test/";

/// One ES256 signing key.
pub struct SigningKey {
    pub kid: String,
    pair: rcgen::KeyPair,
}

impl SigningKey {
    pub fn new(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    /// Its public half as a JWK.
    pub fn jwk(&self) -> Value {
        // The uncompressed point: 0x04, x, y.
        let point = self.pair.public_key_raw();
        json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// `claims` signed with this key, under `kid`.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let key = EncodingKey::from_ec_der(&self.pair.serialize_der());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// A token signed with HMAC-SHA256 under `secret`, whatever the verifier
/// should think of it.
pub fn sign_hs256(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A token signed with a new Ed25519 key (EdDSA), under `kid`.
pub fn sign_eddsa(kid: &str, claims: &Value) -> String {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    let key = EncodingKey::from_ed_der(&pair.serialize_der());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with `alg: none` and no signature.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// `token` with its claims replaced by `claims`, its signature kept.
pub fn tampered(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[derive(Clone)]
struct Shared {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

/// The key-set server.
pub struct Issuer {
    pub port: u16,
    shared: Shared,
}

impl Issuer {
    /// Serves `keys` (JWKs) at `http://127.0.0.1:PORT/jwks`.
    pub fn start(keys: Vec<Value>) -> Self {
        let shared = Shared {
            keys: Arc::new(Mutex::new(keys)),
            fetches: Arc::default(),
        };
        let router = Router::new()
            .route("/jwks", get(jwks))
            .with_state(shared.clone());
        let listener = crate::util::block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        crate::util::spawn(async move { axum::serve(listener, router).await });
        Self { port, shared }
    }

    pub fn jwks_url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks", self.port)
    }

    /// Publishes `keys` in place of the set served so far.
    pub fn publish(&self, keys: Vec<Value>) {
        *self.shared.keys.lock().unwrap() = keys;
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }
}

async fn jwks(State(shared): State<Shared>) -> axum::Json<Value> {
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    let keys = shared.keys.lock().unwrap().clone();
    axum::Json(json!({ "keys": keys }))
}
