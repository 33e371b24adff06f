//! Reading a mesh config: [`load_file`] / [`parse`] (the YAML documents → typed resources →
//! the compiled [`MeshState`]), and [`parse_raw`], the YAML step the L7 file shares.

use std::path::Path;

use super::errors::{ConfigError, ConfigIssue, Validator};
use super::file::compile;
use super::parse::{Mode, Raw};
use super::state::MeshState;

/// Reads and validates a mesh config file.
pub fn load_file(path: &Path) -> Result<MeshState, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_owned(),
        issues: vec![ConfigIssue {
            location: "file".into(),
            field: String::new(),
            reason: format!("cannot read: {e}"),
        }],
    })?;
    parse(path, &text)
}

/// Validates mesh config text; `file` is used in error messages.
pub fn parse(file: &Path, text: &str) -> Result<MeshState, ConfigError> {
    let mut v = Validator::default();
    let raw = parse_raw(&mut v, file, text, Mode::Full)?;
    let state = compile(&mut v, raw);
    v.into_result(file, state)
}

/// Parses the YAML documents of `text` into resources by kind: every document typed, every
/// problem reported to `v`. Fails only on YAML that does not parse.
pub(super) fn parse_raw(
    v: &mut Validator,
    file: &Path,
    text: &str,
    mode: Mode,
) -> Result<Raw, ConfigError> {
    // YAML 1.2 booleans only: `n`, `no`, `on` stay strings (a Node named `n` is not `false`).
    // Budgets sized for meshes of tens of thousands of resources (the defaults stop at 1024
    // documents). Alias expansion is bounded by the text's size, not by the defaults (1M
    // events): with those, a 300-byte alias bomb cost 0.35–0.7 s and 200 MB (found by
    // `tests/fuzz_config.rs`); this way parsing stays linear in the input.
    let alias_work = text.len() + 16 * 1024;
    let options = serde_saphyr::options! {
        strict_booleans: true,
        budget: serde_saphyr::budget! {
            max_documents: 200_000,
            max_nodes: 4_000_000,
            max_events: 16_000_000,
            max_recorded_anchor_events: alias_work,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: alias_work,
        },
    };
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_multiple_with_options(text, options)
    {
        Ok(d) => d,
        Err(e) => {
            return Err(ConfigError {
                file: file.to_owned(),
                issues: vec![ConfigIssue {
                    location: "YAML".into(),
                    field: String::new(),
                    reason: e.to_string(),
                }],
            });
        }
    };
    let mut raw = Raw::default();
    for (i, doc) in docs.into_iter().enumerate() {
        raw.add(v, i + 1, doc, mode);
    }
    Ok(raw)
}
