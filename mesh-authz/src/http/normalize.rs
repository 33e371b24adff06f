//! Request paths normalized the way Istio's `pathNormalization` modes do, so `//admin`,
//! `/%2Fadmin` and `/x/../admin` are all `/admin` to a policy (and to the upstream: the path
//! forwarded is the one evaluated). Depends on [`crate::error`] only.

use crate::error::Error;

/// Istio's `meshConfig.pathNormalization.normalization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PathNormalization {
    /// Only the fragment is dropped.
    None,
    /// RFC 3986 dot segments, percent-decoded unreserved characters, `\` to `/`.
    Base,
    /// `Base` plus merged slashes.
    MergeSlashes,
    /// `MergeSlashes` after decoding `%2F` and `%5C` (the default here: safer than Istio's
    /// `BASE` default).
    #[default]
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// Parses Istio's mode name (`NONE`, `BASE` or `DEFAULT`, `MERGE_SLASHES`,
    /// `DECODE_AND_MERGE_SLASHES`); anything else is [`Error::PathNormalization`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "NONE" => PathNormalization::None,
            "BASE" | "DEFAULT" => PathNormalization::Base,
            "MERGE_SLASHES" => PathNormalization::MergeSlashes,
            "DECODE_AND_MERGE_SLASHES" => PathNormalization::DecodeAndMergeSlashes,
            o => return Err(Error::PathNormalization { mode: o.to_owned() }),
        })
    }
}

impl std::str::FromStr for PathNormalization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        PathNormalization::parse(s)
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Normalizes a request path (without the query) by `mode`, in time linear in its length.
/// `None` for a path that cannot be a request path (not starting with `/`, a malformed percent
/// escape, or `%00`, refused in every mode as Istio documents): the request is refused rather
/// than guessed at.
///
/// The order is Istio's documented one (and Envoy's): percent-decode, then RFC 3986
/// dot-segment removal, then merge slashes, so `/public//../admin` is `/public/admin`.
pub fn normalize_path(path: &str, mode: PathNormalization) -> Option<String> {
    let path = path.split('#').next().unwrap_or_default();
    if !path.starts_with('/') && !path.starts_with('\\') {
        return None;
    }
    if path.as_bytes().windows(3).any(|w| w == b"%00") || path.contains('\0') {
        return None;
    }
    if mode == PathNormalization::None {
        return Some(path.to_owned());
    }
    let decoded = percent_decode(path, mode == PathNormalization::DecodeAndMergeSlashes)?;
    let merge = matches!(
        mode,
        PathNormalization::MergeSlashes | PathNormalization::DecodeAndMergeSlashes
    );
    Some(remove_dot_segments(&decoded, merge))
}

/// Percent-decoding: unreserved characters always (RFC 3986 6.2.2.2); `/` and `\` only when
/// `slashes`. Anything else stays encoded (hex normalized to upper case). `\` becomes `/`.
fn percent_decode(path: &str, slashes: bool) -> Option<String> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(if b[i] == b'\\' { b'/' } else { b[i] });
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return None;
        };
        let c = h << 4 | l;
        let unreserved = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        if unreserved {
            out.push(c);
        } else if slashes && matches!(c, b'/' | b'\\') {
            out.push(b'/');
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(h)], HEX[usize::from(l)]]);
        }
        i += 3;
    }
    // Only ASCII bytes were decoded; the rest came from a `&str`.
    String::from_utf8(out).ok()
}

/// RFC 3986 5.2.4 over `/`-separated segments (one pass, a stack of segments), then, when
/// `merge`, empty segments dropped. A path ending in `/`, `/.` or `/..` keeps a trailing `/`.
fn remove_dot_segments(decoded: &str, merge: bool) -> String {
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segs: Vec<&str> = Vec::new();
    let mut rest = decoded.split('/').skip(1).peekable();
    while let Some(seg) = rest.next() {
        let last = rest.peek().is_none();
        match seg {
            "." => {}
            ".." => {
                segs.pop();
            }
            "" if last => {}
            s => segs.push(s),
        }
    }
    let mut p = String::with_capacity(decoded.len());
    for s in segs.iter().filter(|s| !(merge && s.is_empty())) {
        p.push('/');
        p.push_str(s);
    }
    // The final empty segment was skipped above, so a trailing `/` is added back even after
    // an empty segment: `/a//` stays `/a//` (unmerged), and normalizing twice changes nothing.
    if p.is_empty() || trailing {
        p.push('/');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_modes() {
        let d = PathNormalization::DecodeAndMergeSlashes;
        for p in [
            "/admin",
            "//admin",
            "/%2Fadmin",
            "/x/../admin",
            "/./admin",
            "/%61dmin",
            "\\admin",
            "/%5Cadmin",
            "/admin#frag",
        ] {
            assert_eq!(normalize_path(p, d).as_deref(), Some("/admin"), "{p}");
        }
        assert_eq!(
            normalize_path("/ADMIN", d).as_deref(),
            Some("/ADMIN"),
            "case kept"
        );
        assert_eq!(normalize_path("/a/b/", d).as_deref(), Some("/a/b/"));
        assert_eq!(normalize_path("/a/%2e%2e/b", d).as_deref(), Some("/b"));
        assert_eq!(
            normalize_path("/a%20b", d).as_deref(),
            Some("/a%20b"),
            "reserved stays encoded"
        );
        assert_eq!(normalize_path("/../../etc", d).as_deref(), Some("/etc"));
        assert_eq!(normalize_path("/%zz", d), None, "bad escape refused");
        assert_eq!(normalize_path("admin", d), None);
        let base = PathNormalization::Base;
        assert_eq!(normalize_path("//admin", base).as_deref(), Some("//admin"));
        assert_eq!(
            normalize_path("/%2Fadmin", base).as_deref(),
            Some("/%2Fadmin")
        );
        assert_eq!(
            normalize_path("//admin", PathNormalization::MergeSlashes).as_deref(),
            Some("/admin")
        );
        assert_eq!(
            normalize_path("/x/../a", PathNormalization::None).as_deref(),
            Some("/x/../a")
        );
    }
}
