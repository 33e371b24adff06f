//! How a JWT key source shows in dumps (`/config_dump`) and logs: an inline JWKS keeps its
//! public members, while secret ones — a symmetric key's `k` (`kty: oct`) and a private key's
//! `d`, `p`, `q`, `dp`, `dq`, `qi`, `oth` — read `<redacted>`. Text that is not a JWKS is
//! redacted whole. (CONVENTIONS: secret types print `<redacted>`.)

use serde::Serialize;
use serde_json::Value;

use super::rule::KeySource;

/// What replaces a secret value.
pub(crate) const REDACTED: &str = "<redacted>";

/// JWK members that hold secret key material (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
const SECRET_MEMBERS: &[&str] = &["k", "d", "p", "q", "dp", "dq", "qi", "oth"];

/// The inline JWKS with its secret members replaced.
fn redacted_jwks(json: &str) -> Value {
    let Ok(mut doc) = serde_json::from_str::<Value>(json) else {
        return Value::String(REDACTED.to_owned());
    };
    match doc.get_mut("keys").and_then(Value::as_array_mut) {
        Some(keys) => {
            for key in keys {
                match key.as_object_mut() {
                    Some(members) => {
                        for (name, v) in members.iter_mut() {
                            if SECRET_MEMBERS.contains(&name.as_str()) {
                                *v = Value::String(REDACTED.to_owned());
                            }
                        }
                    }
                    None => *key = Value::String(REDACTED.to_owned()),
                }
            }
            doc
        }
        None => Value::String(REDACTED.to_owned()),
    }
}

impl Serialize for KeySource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            KeySource::Inline(json) => m.serialize_entry("inline", &redacted_jwks(json))?,
            KeySource::Uri(u) => m.serialize_entry("uri", u)?,
            KeySource::Discovery(i) => m.serialize_entry("discovery", i)?,
        }
        m.end()
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Inline(json) => f
                .debug_tuple("Inline")
                .field(&redacted_jwks(json).to_string())
                .finish(),
            KeySource::Uri(u) => f.debug_tuple("Uri").field(u).finish(),
            KeySource::Discovery(i) => f.debug_tuple("Discovery").field(i).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_members_and_non_jwks_text_are_redacted() {
        let src = KeySource::Inline(
            r#"{"keys":[{"kty":"oct","kid":"a","k":"s3cr3t"},{"kty":"RSA","n":"pub","e":"AQAB","d":"priv"},"odd"]}"#
                .to_owned(),
        );
        let json = serde_json::to_value(&src).unwrap_or_default();
        assert_eq!(json["inline"]["keys"][0]["k"], REDACTED);
        assert_eq!(json["inline"]["keys"][0]["kid"], "a");
        assert_eq!(json["inline"]["keys"][1]["d"], REDACTED);
        assert_eq!(json["inline"]["keys"][1]["n"], "pub");
        assert_eq!(json["inline"]["keys"][2], REDACTED);
        assert!(!format!("{src:?}").contains("s3cr3t"));
        let junk = KeySource::Inline("k=s3cr3t".to_owned());
        assert_eq!(
            serde_json::to_value(&junk).unwrap_or_default()["inline"],
            REDACTED
        );
        let uri = KeySource::Uri("https://x/jwks".to_owned());
        assert_eq!(
            serde_json::to_value(&uri).unwrap_or_default(),
            serde_json::json!({"uri": "https://x/jwks"})
        );
    }
}
