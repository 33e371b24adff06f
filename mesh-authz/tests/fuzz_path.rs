//! Fuzzing path normalization (`mesh_authz::http::normalize_path`, every mode) and `paths`
//! templates (`PathMatch::parse`, `matches`) over arbitrary text and over request paths with
//! mutations (escapes, dot segments, slashes, repeated chunks up to 64 KiB).
//!
//! Properties: no panic, every call within the time bound (linear), and for a path that is
//! accepted:
//! - it starts with `/` and holds no `%00` or NUL, in every mode;
//! - normalizing again changes nothing (idempotent: what is evaluated is what is forwarded);
//! - outside `NONE`: no `.`/`..` segment and no `\`; merging modes: no `//`; the decoding
//!   mode: no `%2F`/`%5C` left; every `%` starts an upper-case escape;
//! - a path is refused in all modes but `NONE` alike (malformed escapes are refused by every
//!   decoding mode).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../fuzz/mutate.rs"]
mod mutate;

use mesh_authz::http::{PathMatch, PathNormalization, normalize_path};
use proptest::prelude::*;

const MODES: [PathNormalization; 4] = [
    PathNormalization::None,
    PathNormalization::Base,
    PathNormalization::MergeSlashes,
    PathNormalization::DecodeAndMergeSlashes,
];

const DICT: &[&[u8]] = &[
    b"/", b"\\", b".", b"..", b"/../", b"/./", b"%2e", b"%2E%2E", b"%2f", b"%2F", b"%5C", b"%5c",
    b"%25", b"%252F", b"%41", b"%7e", b"%", b"%0", b"%00", b"#", b"?", b"{*}", b"{**}", b"*",
];

const SEEDS: &[&str] = &[
    "/",
    "/admin",
    "/public/../admin",
    "/public//../admin/",
    "/a/./b/%2e%2e/c",
    "/%2Fadmin%5Cx",
    "//admin",
    "\\admin\\..\\x",
    "/api/v1/users/{id}/..%2f..%2fadmin#frag",
    "/%7Euser/%41%62c",
];

fn paths() -> impl Strategy<Value = String> {
    prop_oneof![
        mutate::bytes(300).prop_map(|b| mutate::text(&b)),
        mutate::bytes(300).prop_map(|b| format!("/{}", mutate::text(&b))),
        mutate::near(SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(), DICT)
            .prop_map(|b| mutate::text(&b)),
    ]
}

fn check(path: &str) -> Result<(), TestCaseError> {
    let mut refused_by_decoding = None;
    for mode in MODES {
        let out = mutate::timed("normalize_path", path.len(), || normalize_path(path, mode));
        if mode != PathNormalization::None {
            let refused = out.is_none();
            prop_assert_eq!(
                *refused_by_decoding.get_or_insert(refused),
                refused,
                "modes disagree on refusing {:?}",
                path
            );
        }
        let Some(p) = out else { continue };
        prop_assert!(
            p.starts_with('/') || (mode == PathNormalization::None && p.starts_with('\\'))
        );
        prop_assert!(
            !p.contains("%00") && !p.contains('\0'),
            "{:?} -> {:?}",
            path,
            p
        );
        let again = normalize_path(&p, mode);
        prop_assert_eq!(
            again.as_deref(),
            Some(p.as_str()),
            "not idempotent ({:?}) for {:?}",
            mode,
            path
        );
        if mode == PathNormalization::None {
            prop_assert!(!p.contains('#'));
            continue;
        }
        prop_assert!(!p.contains('\\'), "{:?} -> {:?}", path, p);
        for seg in p.split('/') {
            prop_assert!(
                seg != "." && seg != "..",
                "dot segment in {:?} from {:?}",
                p,
                path
            );
        }
        let b = p.as_bytes();
        for (i, _) in p.match_indices('%') {
            let esc = b.get(i + 1..i + 3);
            prop_assert!(
                esc.is_some_and(|e| e
                    .iter()
                    .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))),
                "bad escape at {} in {:?}",
                i,
                p
            );
        }
        if mode != PathNormalization::Base {
            prop_assert!(!p.contains("//"), "{:?} -> {:?}", path, p);
        }
        if mode == PathNormalization::DecodeAndMergeSlashes {
            prop_assert!(
                !p.contains("%2F") && !p.contains("%5C"),
                "{:?} -> {:?}",
                path,
                p
            );
        }
    }
    Ok(())
}

/// Found by `normalize_path_properties`: `///` was `//` in `BASE`, and `//` was `/`.
#[test]
fn known_base_mode_empty_segments() {
    for (p, want) in [
        ("///", "///"),
        ("//", "//"),
        ("/a//", "/a//"),
        ("/a//.", "/a//"),
        ("/a//..", "/a/"),
    ] {
        assert_eq!(
            normalize_path(p, PathNormalization::Base).as_deref(),
            Some(want),
            "{p}"
        );
        assert_eq!(
            normalize_path(want, PathNormalization::Base).as_deref(),
            Some(want),
            "{want}"
        );
    }
    assert_eq!(
        normalize_path("///", PathNormalization::MergeSlashes).as_deref(),
        Some("/")
    );
}

proptest! {
    #![proptest_config(mutate::config())]

    #[test]
    fn normalize_path_properties(path in paths()) {
        check(&path)?;
    }

    #[test]
    fn path_templates(template in paths(), path in paths()) {
        if let Ok(m) = mutate::timed("PathMatch::parse", template.len(), || PathMatch::parse(&template)) {
            let n = template.len() + path.len();
            mutate::timed("PathMatch::matches", n, || m.matches(&path));
        }
    }

    #[test]
    fn templates_match_their_own_paths(segs in prop::collection::vec("[a-z0-9._~-]{1,8}", 1..8), star in any::<prop::sample::Index>()) {
        // A template with one segment replaced by `{*}` matches the path it came from.
        let path = format!("/{}", segs.join("/"));
        let mut t = segs.clone();
        let i = star.index(t.len());
        t[i] = "{*}".into();
        let m = PathMatch::parse(&format!("/{}", t.join("/"))).unwrap();
        prop_assert!(m.matches(&path));
        let rest = PathMatch::parse(&format!("/{}/{{**}}", segs[..i].join("/"))).unwrap();
        prop_assert!(i == 0 || rest.matches(&path), "{:?}", rest);
    }
}
