//! The HTTP fields of a rule as data: `paths` matches (with templates), `to[].operation`'s
//! hosts, methods and paths, and HTTP `when` conditions. Evaluated per request by
//! [`crate::http`]; here only parsing and path matching. Depends on [`super::string`] and
//! [`crate::error`] only.

use super::string::StringMatch;
use crate::error::Error;

/// A `paths` entry: Istio's exact, `prefix*`, `*suffix`, `*`, or a template with `{*}` (one
/// segment) and `{**}` (any number of segments, last).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// As a string match.
    Plain(StringMatch),
    /// Segments: `None` is `{*}`; a final `{**}` is `rest`.
    Template {
        /// Literal segments or `{*}`.
        segments: Vec<Option<String>>,
        /// Ends in `{**}`.
        rest: bool,
    },
}

impl PathMatch {
    /// Parses a `paths` value.
    pub fn parse(s: &str) -> Result<PathMatch, Error> {
        if !s.contains('{') {
            return Ok(PathMatch::Plain(StringMatch::parse(s)));
        }
        let parts: Vec<&str> = s.trim_start_matches('/').split('/').collect();
        let mut segments = Vec::new();
        let mut rest = false;
        for (i, p) in parts.iter().enumerate() {
            match *p {
                "{*}" => segments.push(None),
                "{**}" if i + 1 == parts.len() => rest = true,
                "{**}" => return Err(Error::TemplateRestNotLast { path: s.to_owned() }),
                p if p.contains('{') || p.contains('*') => {
                    return Err(Error::TemplateSegment { path: s.to_owned() });
                }
                p => segments.push(Some(p.to_owned())),
            }
        }
        Ok(PathMatch::Template { segments, rest })
    }

    /// Whether a normalized path matches (per request: no allocation).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Plain(m) => m.matches(Some(path)),
            PathMatch::Template { segments, rest } => {
                let mut got = path.trim_start_matches('/').split('/');
                for want in segments {
                    let hit = match (want, got.next()) {
                        (_, None) => false,
                        (None, Some(g)) => !g.is_empty(),
                        (Some(w), Some(g)) => w == g,
                    };
                    if !hit {
                        return false;
                    }
                }
                *rest || got.next().is_none()
            }
        }
    }
}

/// HTTP fields of one `to[].operation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct HttpOperation {
    pub hosts: Vec<StringMatch>,
    pub not_hosts: Vec<StringMatch>,
    pub methods: Vec<String>,
    pub not_methods: Vec<String>,
    pub paths: Vec<PathMatch>,
    pub not_paths: Vec<PathMatch>,
}

/// An HTTP `when` condition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HttpCondition {
    /// `request.headers[name]` (lower-case name): values, notValues.
    Header(String, Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.principal`: values, notValues.
    RequestPrincipal(Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.audiences`: any of the token's audiences.
    Audiences(Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.presenter` (`azp`).
    Presenter(Vec<StringMatch>, Vec<StringMatch>),
    /// `request.auth.claims[a][b]`: a string claim, or any element of a string list claim.
    Claim(Vec<String>, Vec<StringMatch>, Vec<StringMatch>),
    /// An attribute this data plane does not provide (`connection.sni`): a DENY rule is
    /// enforced without it, an ALLOW rule using it never matches; the flag says whether
    /// `values` were given.
    Absent(String, bool),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_matches_and_templates() {
        let m = |s: &str, p: &str| PathMatch::parse(s).unwrap().matches(p);
        assert!(m("/admin*", "/admin"));
        assert!(m("/admin*", "/admin/x"));
        assert!(!m("/admin*", "/ADMIN"));
        assert!(m("*.html", "/a/b.html"));
        assert!(m("/api/{*}/info", "/api/v1/info"));
        assert!(!m("/api/{*}/info", "/api/v1/x/info"));
        assert!(m("/api/{**}", "/api/a/b/c"));
        assert!(m("/api/{**}", "/api"), "{{**}} matches zero segments");
        assert!(PathMatch::parse("/api/{**}/x").is_err());
        assert!(PathMatch::parse("/api/v{*}").is_err());
    }

    /// The former matcher (split into a `Vec`), as the reference.
    fn reference(segments: &[Option<String>], rest: bool, path: &str) -> bool {
        let got: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        if got.len() < segments.len() || (!rest && got.len() != segments.len()) {
            return false;
        }
        segments.iter().zip(&got).all(|(want, g)| match want {
            None => !g.is_empty(),
            Some(w) => w == g,
        })
    }

    proptest::proptest! {
        #[test]
        fn template_matching_is_the_former_one(
            segments in proptest::collection::vec(proptest::option::of("[ab]{0,2}"), 0..4),
            rest: bool,
            path in "/?[ab/]{0,8}",
        ) {
            let m = PathMatch::Template { segments: segments.clone(), rest };
            proptest::prop_assert_eq!(m.matches(&path), reference(&segments, rest, &path));
        }
    }
}
