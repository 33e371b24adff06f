//! Process logging with a log filter that can be changed at run time (`/logging`), as
//! Istio's ztunnel admin does: `POST /logging` shows the level, `?level=<filter>` sets it
//! (tracing `EnvFilter` syntax, e.g. `debug` or `info,access=debug`), `?reset` restores the
//! start-up filter.

use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::Error;
use crate::http::{Response, Router};

type Handle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<Handle>,
    initial: String,
    current: Arc<Mutex<String>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl LogControl {
    /// Installs the process's stderr subscriber with `filter` (`RUST_LOG` overrides it). If a
    /// subscriber is already installed the returned control cannot change anything.
    pub fn init(filter: &str) -> LogControl {
        let initial = std::env::var("RUST_LOG")
            .ok()
            .filter(|f| EnvFilter::try_new(f).is_ok())
            .unwrap_or_else(|| filter.to_owned());
        let env = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
        let (layer, handle) = reload::Layer::new(env);
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr);
        let installed = tracing_subscriber::registry()
            .with(layer)
            .with(fmt)
            .try_init()
            .is_ok();
        LogControl {
            handle: installed.then_some(handle),
            current: Arc::new(Mutex::new(initial.clone())),
            initial,
        }
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the filter; errors (and changes nothing) if `filter` does not parse
    /// ([`Error::LogFilter`]) or this control cannot change the process's filter
    /// ([`Error::LogNotControlled`]).
    pub fn set(&self, filter: &str) -> Result<(), Error> {
        let env = EnvFilter::try_new(filter).map_err(|source| Error::LogFilter {
            filter: filter.to_owned(),
            source,
        })?;
        let Some(h) = &self.handle else {
            return Err(Error::LogNotControlled);
        };
        h.reload(env)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_owned();
        Ok(())
    }

    /// `/logging`.
    pub fn router(&self) -> Router {
        let c = self.clone();
        Router::new().route("/logging", move |req| {
            if req.method != Method::POST {
                if req.query.is_empty() {
                    return Response::text(
                        StatusCode::OK,
                        format!("current log level is {}\n", c.current()),
                    );
                }
                return Response::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "use POST to change the level\n",
                );
            }
            let target = if req.param("reset").is_some() {
                Some(c.initial.clone())
            } else {
                req.param("level").map(str::to_owned)
            };
            if let Some(level) = target {
                if let Err(e) = c.set(&level) {
                    return Response::text(
                        StatusCode::BAD_REQUEST,
                        format!("Invalid level provided: {level}: {e}\n"),
                    );
                }
                tracing::info!(level = %level, "log level changed");
            }
            Response::text(
                StatusCode::OK,
                format!("current log level is {}\n", c.current()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uncontrolled() -> LogControl {
        LogControl {
            handle: None,
            initial: "info".into(),
            current: Arc::new(Mutex::new("info".into())),
        }
    }

    #[test]
    fn set_errors_are_typed_with_the_former_texts() {
        let c = uncontrolled();
        let bad = "x=notalevel";
        let want = EnvFilter::try_new(bad).err().map(|e| e.to_string());
        let got = c.set(bad).err();
        assert!(matches!(got, Some(Error::LogFilter { .. })), "{got:?}");
        assert_eq!(got.map(|e| e.to_string()), want);
        let got = c.set("debug").err();
        assert!(matches!(got, Some(Error::LogNotControlled)), "{got:?}");
        assert_eq!(
            got.map(|e| e.to_string()).as_deref(),
            Some("logging is not controlled by this process")
        );
        assert_eq!(c.current(), "info", "nothing changed");
    }
}
