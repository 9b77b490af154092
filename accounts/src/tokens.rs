//! Access tokens: Ed25519-signed JWTs (EdDSA) that any service verifies
//! offline with the public keys from `GET /v1/auth/keys` (a JWKS).
//!
//! The signing key lives in a PKCS#8 PEM file (mode 0600), created on first
//! start. Rotation: start with a new `--token-key-file` and pass the old one as
//! `--token-previous-key-file`; both public keys stay in the JWKS until tokens
//! signed by the old one have expired.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::RwLock;

use std::time::{Duration, Instant};

use courier_common::sync::lock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::revocations::Revocations;

pub const ACCESS_TOKEN_TTL_S_DEFAULT: u64 = 15 * 60;
/// The longest access-token lifetime the issuer may be configured with.
pub const ACCESS_TOKEN_TTL_S_MAX: u64 = 3_600;
const ISSUER: &str = "courier";
const AUDIENCE: &str = "courier";
/// Clock skew tolerated between the issuing and the verifying service.
const CLOCK_SKEW_S: u64 = 30;
/// A verifier fetching a remote JWKS refreshes it at most this often when it
/// meets an unknown key id (so forged kids cannot make it hammer accounts).
const JWKS_REFRESH_INTERVAL_MIN: Duration = Duration::from_secs(30);
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What an access token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The account id.
    pub sub: String,
    /// The device session id.
    pub did: String,
    /// The account's region (ISO 3166-1 alpha-2).
    pub region: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write the signing key {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path} is not an Ed25519 private key in PKCS#8 PEM form")]
    Format { path: String },
    #[error("the JWKS is unusable: {0}")]
    Jwks(String),
}

/// An Ed25519 key pair with its key id (the first 16 hex digits of the
/// SHA-256 of the public key, so the same key always has the same id).
pub struct TokenKey {
    kid: String,
    encoding: EncodingKey,
    public: [u8; 32],
}

impl TokenKey {
    fn from_signing_key(key: &SigningKey) -> Self {
        let der = key.to_pkcs8_der().expect("an Ed25519 key always encodes to PKCS#8");
        let public = key.verifying_key().to_bytes();
        let kid = format!("{:x}", Sha256::digest(public))[..16].to_owned();
        TokenKey { kid, encoding: EncodingKey::from_ed_der(der.as_bytes()), public }
    }

    /// A fresh random key (tests, benchmarks).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut seed);
        Self::from_signing_key(&SigningKey::from_bytes(&seed))
    }

    /// Loads the key at `path`, or creates one there (mode 0600) if the file
    /// does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        Ok(Self::from_signing_key(&load_or_create_signing_key(path, "token-signing")?))
    }

    /// Loads an existing key; a missing file is an error.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Ok(Self::from_signing_key(&load_signing_key(path)?))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            alg: "EdDSA".into(),
            key_use: "sig".into(),
            kid: self.kid.clone(),
            x: URL_SAFE_NO_PAD.encode(self.public),
        }
    }
}

/// The Ed25519 key in the PKCS#8 PEM file at `path`, or a new one written
/// there (mode 0600) if the file does not exist; `what` names it in the log.
pub fn load_or_create_signing_key(path: &Path, what: &str) -> Result<SigningKey, KeyError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => signing_key_from_pem(&pem, path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut seed);
            let key = SigningKey::from_bytes(&seed);
            let pem = key
                .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
                .expect("an Ed25519 key always encodes to PKCS#8 PEM");
            write_private(path, pem.as_bytes())
                .map_err(|source| KeyError::Write { path: path.display().to_string(), source })?;
            tracing::info!(path = %path.display(), "created a new {what} key");
            Ok(key)
        }
        Err(source) => Err(KeyError::Read { path: path.display().to_string(), source }),
    }
}

/// The Ed25519 key in the PKCS#8 PEM file at `path`; a missing file is an error.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let pem =
        std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
    signing_key_from_pem(&pem, path)
}

fn signing_key_from_pem(pem: &str, path: &Path) -> Result<SigningKey, KeyError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|_| KeyError::Format { path: path.display().to_string() })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A JSON Web Key Set (RFC 7517) of Ed25519 public keys.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    /// Always `OKP`.
    pub kty: String,
    /// Always `Ed25519`.
    pub crv: String,
    /// Always `EdDSA`.
    pub alg: String,
    #[serde(rename = "use")]
    pub key_use: String,
    pub kid: String,
    /// The public key, base64url without padding.
    pub x: String,
}

/// Signs access tokens with the current key.
pub struct TokenIssuer {
    key: TokenKey,
    previous: Vec<TokenKey>,
    ttl_s: u64,
}

impl TokenIssuer {
    pub fn new(key: TokenKey, previous: Vec<TokenKey>, ttl_s: u64) -> Self {
        TokenIssuer { key, previous, ttl_s }
    }

    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
    }

    pub fn issue(&self, account_id: &str, device_id: &str, region: &str, now_s: u64) -> String {
        let claims = AccessClaims {
            sub: account_id.to_owned(),
            did: device_id.to_owned(),
            region: region.to_owned(),
            iat: now_s,
            exp: now_s + self.ttl_s,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .expect("signing with a loaded Ed25519 key cannot fail")
    }

    /// The public keys: the current one first, then those still trusted.
    pub fn jwks(&self) -> Jwks {
        Jwks { keys: std::iter::once(&self.key).chain(&self.previous).map(TokenKey::jwk).collect() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is malformed")]
    Malformed,
    #[error("the access token was signed by an unknown key")]
    UnknownKey,
    #[error("the access token has expired; refresh it")]
    Expired,
    #[error("the access token is not valid")]
    Invalid,
    #[error("this device was signed out; sign in again")]
    Revoked,
}

/// Verifies access tokens offline against a set of public keys, optionally
/// kept fresh from a remote JWKS (split deployments).
pub struct TokenVerifier {
    keys: RwLock<HashMap<String, DecodingKey>>,
    remote: Option<Remote>,
    validation: Validation,
    /// Tokens already verified, by SHA-256 of the whole token: a client sends
    /// the same token for minutes, and an Ed25519 verification costs tens of
    /// microseconds. Expiry is still checked on every use.
    verified: std::sync::Mutex<HashMap<[u8; 32], AccessClaims>>,
    /// Devices whose tokens are refused before they expire.
    revocations: Revocations,
}

/// Verified tokens remembered; the cache starts over when full.
const VERIFIED_TOKENS_CACHED_MAX: usize = 100_000;

struct Remote {
    url: String,
    client: reqwest::Client,
    last_fetch: tokio::sync::Mutex<Instant>,
}

impl TokenVerifier {
    pub fn from_jwks(jwks: &Jwks) -> Result<Self, KeyError> {
        Ok(TokenVerifier {
            keys: RwLock::new(decoding_keys(jwks)?),
            remote: None,
            validation: validation(),
            verified: Default::default(),
            revocations: Revocations::default(),
        })
    }

    /// Fetches the JWKS at `url` now, and again when a token names a key id
    /// it does not know (at most every 30 s).
    pub async fn remote(url: &str) -> Result<Self, KeyError> {
        let client = courier_common::client::http_client_builder()
            .timeout(JWKS_FETCH_TIMEOUT)
            .build()
            .map_err(|error| KeyError::Jwks(error.to_string()))?;
        let jwks = fetch_jwks(&client, url).await?;
        Ok(TokenVerifier {
            keys: RwLock::new(decoding_keys(&jwks)?),
            remote: Some(Remote { url: url.to_owned(), client, last_fetch: tokio::sync::Mutex::new(Instant::now()) }),
            validation: validation(),
            verified: Default::default(),
            revocations: Revocations::default(),
        })
    }

    /// The revoked devices this verifier refuses.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Checks signature, issuer, audience, expiry and that the device was not signed out.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        match self.verify_with_known_keys(token) {
            Err(TokenError::UnknownKey) if self.remote.is_some() => {
                self.refresh().await;
                self.verify_with_known_keys(token)
            }
            result => result,
        }
    }

    /// Like [`TokenVerifier::verify`], without remembering the token: for a
    /// token presented once per connection (a signaling socket's `auth`), so
    /// that many idle connections do not fill the cache.
    pub async fn verify_once(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let claims = match self.verify_signature(token) {
            Err(TokenError::UnknownKey) if self.remote.is_some() => {
                self.refresh().await;
                self.verify_signature(token)
            }
            result => result,
        }?;
        self.not_revoked(claims)
    }

    fn not_revoked(&self, claims: AccessClaims) -> Result<AccessClaims, TokenError> {
        if self.revocations.is_revoked(&claims.did) { Err(TokenError::Revoked) } else { Ok(claims) }
    }

    /// Verification without any I/O (the hot path).
    pub fn verify_with_known_keys(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = lock(&self.verified).get(&digest).cloned();
        if let Some(claims) = cached {
            let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            return if claims.exp + CLOCK_SKEW_S >= now_s {
                self.not_revoked(claims)
            } else {
                Err(TokenError::Expired)
            };
        }
        let claims = self.not_revoked(self.verify_signature(token)?)?;
        let mut verified = lock(&self.verified);
        if verified.len() >= VERIFIED_TOKENS_CACHED_MAX {
            verified.clear();
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    /// The token's own checks (signature, issuer, audience, expiry),
    /// bypassing the cache of verified tokens and the revocations.
    pub fn verify_signature(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let keys = courier_common::sync::read(&self.keys);
        let key = keys.get(&kid).ok_or(TokenError::UnknownKey)?;
        match jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(error) => match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(TokenError::Expired),
                _ => Err(TokenError::Invalid),
            },
        }
    }

    async fn refresh(&self) {
        let Some(remote) = &self.remote else { return };
        let mut last_fetch = remote.last_fetch.lock().await;
        if last_fetch.elapsed() < JWKS_REFRESH_INTERVAL_MIN {
            return;
        }
        *last_fetch = Instant::now();
        match fetch_jwks(&remote.client, &remote.url).await.and_then(|jwks| decoding_keys(&jwks)) {
            Ok(keys) => *courier_common::sync::write(&self.keys) = keys,
            Err(error) => {
                tracing::warn!(%error, "could not refresh the JWKS; keeping the keys we have")
            }
        }
    }
}

fn validation() -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    validation.leeway = CLOCK_SKEW_S;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation
}

fn decoding_keys(jwks: &Jwks) -> Result<HashMap<String, DecodingKey>, KeyError> {
    let mut keys = HashMap::new();
    for jwk in &jwks.keys {
        if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
            continue;
        }
        let raw = URL_SAFE_NO_PAD.decode(&jwk.x).map_err(|_| KeyError::Jwks(format!("key {} has a bad x", jwk.kid)))?;
        if raw.len() != 32 {
            return Err(KeyError::Jwks(format!("key {} is not 32 bytes", jwk.kid)));
        }
        let key = DecodingKey::from_ed_components(&jwk.x).map_err(|error| KeyError::Jwks(error.to_string()))?;
        keys.insert(jwk.kid.clone(), key);
    }
    if keys.is_empty() {
        return Err(KeyError::Jwks("no Ed25519 keys in the set".into()));
    }
    Ok(keys)
}

async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<Jwks, KeyError> {
    let response = client.get(url).send().await.map_err(|error| KeyError::Jwks(format!("GET {url}: {error}")))?;
    if !response.status().is_success() {
        return Err(KeyError::Jwks(format!("GET {url}: status {}", response.status())));
    }
    response.json::<Jwks>().await.map_err(|error| KeyError::Jwks(format!("GET {url}: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_s() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[tokio::test]
    async fn issues_and_verifies() {
        let issuer = TokenIssuer::new(TokenKey::generate(), vec![], 900);
        let verifier = TokenVerifier::from_jwks(&issuer.jwks()).unwrap();
        let token = issuer.issue("acc", "dev", "RU", now_s());
        let claims = verifier.verify(&token).await.unwrap();
        assert_eq!((claims.sub.as_str(), claims.did.as_str(), claims.region.as_str()), ("acc", "dev", "RU"));
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[tokio::test]
    async fn a_cached_token_still_expires() {
        let issuer = TokenIssuer::new(TokenKey::generate(), vec![], 1);
        let verifier = TokenVerifier::from_jwks(&issuer.jwks()).unwrap();
        // Issued long enough ago that only the clock-skew allowance keeps it alive.
        let token = issuer.issue("acc", "dev", "RU", now_s() - CLOCK_SKEW_S);
        verifier.verify(&token).await.unwrap();
        verifier.verify(&token).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        assert_eq!(verifier.verify(&token).await, Err(TokenError::Expired), "from the cache, too");
    }

    #[tokio::test]
    async fn refuses_expired_forged_and_foreign_tokens() {
        let issuer = TokenIssuer::new(TokenKey::generate(), vec![], 900);
        let verifier = TokenVerifier::from_jwks(&issuer.jwks()).unwrap();
        let expired = issuer.issue("acc", "dev", "RU", now_s() - 3600);
        assert_eq!(verifier.verify(&expired).await, Err(TokenError::Expired));
        assert_eq!(verifier.verify("not.a.token").await, Err(TokenError::Malformed));
        let token = issuer.issue("acc", "dev", "RU", now_s());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap()
                .iter()
                .map(|&b| if b == b'c' { b'd' } else { b })
                .collect::<Vec<_>>(),
        );
        parts[1] = &forged_payload;
        assert_eq!(verifier.verify(&parts.join(".")).await, Err(TokenError::Invalid));
        // Another installation's key with the same kid is still refused by the signature.
        let other = TokenIssuer::new(TokenKey::generate(), vec![], 900);
        assert_eq!(verifier.verify(&other.issue("acc", "dev", "RU", now_s())).await, Err(TokenError::UnknownKey));
    }

    #[test]
    fn key_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let created = TokenKey::load_or_create(&path).unwrap();
        let loaded = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(created.kid(), loaded.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("bad.pem"), "nope").unwrap();
        assert!(matches!(TokenKey::load(&dir.path().join("bad.pem")), Err(KeyError::Format { .. })));
    }

    #[tokio::test]
    async fn a_remote_verifier_fetches_the_jwks_and_refuses_unknown_keys() {
        let issuer = std::sync::Arc::new(TokenIssuer::new(TokenKey::generate(), vec![], 900));
        let served = issuer.clone();
        let app = axum::Router::new()
            .route("/v1/auth/keys", axum::routing::get(move || std::future::ready(axum::Json(served.jwks()))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/auth/keys", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let verifier = TokenVerifier::remote(&url).await.unwrap();
        let claims = verifier.verify(&issuer.issue("acc", "dev", "BR", now_s())).await.unwrap();
        assert_eq!(claims.region, "BR");
        let stranger = TokenIssuer::new(TokenKey::generate(), vec![], 900);
        assert_eq!(verifier.verify(&stranger.issue("acc", "dev", "BR", now_s())).await, Err(TokenError::UnknownKey));
        assert!(TokenVerifier::remote("http://127.0.0.1:9/nothing").await.is_err());
    }

    #[tokio::test]
    async fn previous_keys_stay_trusted_during_rotation() {
        let old_issuer = TokenIssuer::new(TokenKey::generate(), vec![], 900);
        let rotated = TokenIssuer::new(
            TokenKey::generate(),
            vec![TokenKey {
                kid: old_issuer.key.kid.clone(),
                encoding: old_issuer.key.encoding.clone(),
                public: old_issuer.key.public,
            }],
            900,
        );
        let verifier = TokenVerifier::from_jwks(&rotated.jwks()).unwrap();
        assert_eq!(rotated.jwks().keys.len(), 2);
        verifier.verify(&old_issuer.issue("a", "d", "RU", now_s())).await.unwrap();
        verifier.verify(&rotated.issue("a", "d", "RU", now_s())).await.unwrap();
    }
}
