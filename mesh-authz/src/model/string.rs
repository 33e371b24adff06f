//! Istio's string matches (`*`, `prefix*`, `*suffix`, exact). Layer 0: plain data.

/// A string match with Istio's `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// `*`: any non-empty value.
    Presence,
    /// `abc*`.
    Prefix(String),
    /// `*abc`.
    Suffix(String),
    /// `abc`.
    Exact(String),
}

impl StringMatch {
    /// Parses Istio's syntax: `*`, `prefix*`, `*suffix` or an exact value.
    pub fn parse(s: &str) -> StringMatch {
        if s == "*" {
            StringMatch::Presence
        } else if let Some(rest) = s.strip_prefix('*') {
            StringMatch::Suffix(rest.to_owned())
        } else if let Some(rest) = s.strip_suffix('*') {
            StringMatch::Prefix(rest.to_owned())
        } else {
            StringMatch::Exact(s.to_owned())
        }
    }

    /// Whether `v` (absent: no value) matches.
    pub fn matches(&self, v: Option<&str>) -> bool {
        let Some(v) = v else { return false };
        match self {
            StringMatch::Presence => !v.is_empty(),
            StringMatch::Prefix(p) => v.starts_with(p.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Exact(e) => v == e,
        }
    }
}
