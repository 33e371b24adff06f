//! The typed errors keep the texts the former `String` errors had (config errors show them).

use mesh_authz::Error;
use mesh_authz::http::{PathMatch, PathNormalization};
use mesh_authz::jwt::KeySet;

#[test]
fn path_template_errors_keep_their_text() {
    let e = PathMatch::parse("/api/{**}/x").err();
    assert!(
        matches!(e, Some(Error::TemplateRestNotLast { .. })),
        "{e:?}"
    );
    assert_eq!(
        e.map(|e| e.to_string()).as_deref(),
        Some(r#""/api/{**}/x": `{**}` must be the last segment"#)
    );
    let e = PathMatch::parse("/api/v{*}").err();
    assert!(matches!(e, Some(Error::TemplateSegment { .. })), "{e:?}");
    assert_eq!(
        e.map(|e| e.to_string()).as_deref(),
        Some(r#""/api/v{*}": a template segment is `{*}`, `{**}` or literal"#)
    );
}

#[test]
fn path_normalization_errors_keep_their_text() {
    let want = r#""bogus": expected NONE, BASE, MERGE_SLASHES or DECODE_AND_MERGE_SLASHES"#;
    let e = PathNormalization::parse("bogus").err();
    assert!(matches!(e, Some(Error::PathNormalization { .. })), "{e:?}");
    assert_eq!(e.map(|e| e.to_string()).as_deref(), Some(want));
    assert_eq!(
        "bogus"
            .parse::<PathNormalization>()
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some(want)
    );
    assert_eq!(
        "DEFAULT".parse::<PathNormalization>().ok(),
        Some(PathNormalization::Base)
    );
}

#[test]
fn jwks_errors_keep_their_text() {
    let e = KeySet::parse("k=v").err();
    assert!(matches!(e, Some(Error::JwksFormat { .. })), "{e:?}");
    let text = e.map(|e| e.to_string()).unwrap_or_default();
    assert!(text.starts_with("not a JWKS: expected value"), "{text}");
    let e = KeySet::parse(r#"{"keys": [{"kty": "nope"}]}"#).err();
    assert!(
        matches!(e, Some(Error::JwksNoUsableKey { skipped: 1 })),
        "{e:?}"
    );
    assert_eq!(
        e.map(|e| e.to_string()).as_deref(),
        Some("no usable key in the JWKS (1 skipped)")
    );
}
