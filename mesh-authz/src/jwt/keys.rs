//! JWKS documents parsed into verification keys. Depends on [`crate::error`] only.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;

use crate::error::Error;

/// One verification key.
#[derive(Clone)]
pub struct Key {
    /// `kid`.
    pub kid: Option<String>,
    /// `alg`, when the JWK names one.
    pub alg: Option<Algorithm>,
    pub(super) key: DecodingKey,
}

/// A parsed JWKS.
#[derive(Clone, Default)]
pub struct KeySet {
    /// Its usable keys.
    pub keys: Vec<Key>,
    /// Keys skipped (unsupported type, `use: enc`, malformed).
    pub skipped: usize,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        write!(f, "KeySet{{kids: {kids:?}, skipped: {}}}", self.skipped)
    }
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Keys that cannot verify signatures are
    /// skipped and counted; a set with no usable key is an error.
    pub fn parse(json: &str) -> Result<KeySet, Error> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc = serde_json::from_str(json).map_err(|source| Error::JwksFormat { source })?;
        let mut set = KeySet::default();
        for k in doc.keys {
            let Ok(jwk) = serde_json::from_value::<jsonwebtoken::jwk::Jwk>(k) else {
                set.skipped += 1;
                continue;
            };
            if matches!(
                jwk.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            ) {
                set.skipped += 1;
                continue;
            }
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::try_from(a).ok());
            match DecodingKey::from_jwk(&jwk) {
                Ok(key) => set.keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                }),
                Err(_) => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(Error::JwksNoUsableKey {
                skipped: set.skipped,
            });
        }
        Ok(set)
    }

    /// The key ids, for logs and config dumps.
    pub fn kids(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.kid.clone().unwrap_or_else(|| "-".into()))
            .collect()
    }
}
