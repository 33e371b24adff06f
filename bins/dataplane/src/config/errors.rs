//! What a rejected config reports: [`ConfigIssue`], [`ConfigError`], and the [`Validator`] that
//! collects the issues while a config is checked. A leaf module of `config`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Which document, e.g. `document 2 (WorkloadEntry demo/echo)`.
    pub location: String,
    /// The field path, e.g. `spec.ports[0].number`.
    pub field: String,
    /// Why it is wrong.
    pub reason: String,
}

/// A rejected config file: every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The problems.
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", self.file.display(), issue.location)?;
            if !issue.field.is_empty() {
                write!(f, ": {}", issue.field)?;
            }
            write!(f, ": {}", issue.reason)?;
        }
        Ok(())
    }
}

/// Collects the problems found, each with its location.
#[derive(Default)]
pub(super) struct Validator {
    pub(super) issues: Vec<ConfigIssue>,
}

impl Validator {
    pub(super) fn err(
        &mut self,
        location: &str,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.issues.push(ConfigIssue {
            location: location.to_owned(),
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `ok` if no problem was found, else every problem found in `file`.
    pub(super) fn into_result<T>(self, file: &Path, ok: T) -> Result<T, ConfigError> {
        if self.issues.is_empty() {
            Ok(ok)
        } else {
            Err(ConfigError {
                file: file.to_owned(),
                issues: self.issues,
            })
        }
    }
}
