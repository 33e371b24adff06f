//! The tool's output: lines on stdout, errors on stderr (kept apart from the commands so that
//! they depend on it and not on the crate root).

use std::io::Write;
use std::process::ExitCode;

/// Writes one line to stdout (locked), ignoring a closed pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}
pub(crate) use say;

/// Writes `error: <msg>` to stderr; the exit code of a failed command.
pub(crate) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "error: {msg}");
    ExitCode::FAILURE
}
