//! Per-proxy log capture for proxy cores running inside the test process.
//!
//! Each in-process proxy runs on a runtime of its own whose threads are named `h2t:<id>`. One
//! process-wide tracing subscriber (installed on first use) formats events exactly as the
//! binaries do (tracing-subscriber's default format, no colours) and routes each line by the
//! name of the thread that emitted it: into that proxy's buffer, filtered by its own `--log`
//! filter, as a separate process's stderr would be. Events from other threads (the test's own
//! runtime) go to stderr at `info` (or `RUST_LOG`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tracing::Metadata;
use tracing::subscriber::Interest;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Prefix of the names of the threads of in-process proxies.
pub(crate) const THREAD_PREFIX: &str = "h2t:";

/// Where one proxy's lines go, and which it keeps.
struct Route {
    logs: Arc<Mutex<String>>,
    filter: EnvFilter,
}

/// Routes by proxy id.
fn routes() -> &'static Mutex<HashMap<u64, Arc<Route>>> {
    static ROUTES: OnceLock<Mutex<HashMap<u64, Arc<Route>>>> = OnceLock::new();
    ROUTES.get_or_init(Default::default)
}

/// The filter for threads that belong to no proxy.
fn default_filter() -> &'static EnvFilter {
    static F: OnceLock<EnvFilter> = OnceLock::new();
    F.get_or_init(|| {
        std::env::var("RUST_LOG")
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new("info"))
    })
}

thread_local! {
    /// This thread's route, looked up once (`Some(None)`: not a proxy thread).
    static ROUTE: RefCell<Option<Option<Arc<Route>>>> = const { RefCell::new(None) };
}

/// The route of the current thread, if it is a proxy's.
fn current() -> Option<Arc<Route>> {
    ROUTE.with(|r| {
        r.borrow_mut()
            .get_or_insert_with(|| {
                let t = std::thread::current();
                let id: u64 = t.name()?.strip_prefix(THREAD_PREFIX)?.parse().ok()?;
                routes().lock().unwrap().get(&id).cloned()
            })
            .clone()
    })
}

/// A proxy's log buffer, registered under a fresh id: name its runtime's threads
/// `h2t:<id>` ([`THREAD_PREFIX`]). `filter` is its `--log` value (`RUST_LOG` overrides it, as
/// for the binaries).
pub(crate) fn register(filter: &str) -> (u64, Arc<Mutex<String>>) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    install();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| filter.to_owned());
    let logs = Arc::new(Mutex::new(String::new()));
    let route = Route {
        logs: logs.clone(),
        filter: EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")),
    };
    routes().lock().unwrap().insert(id, Arc::new(route));
    (id, logs)
}

/// Forgets a proxy's route (its threads are gone).
pub(crate) fn unregister(id: u64) {
    routes().lock().unwrap().remove(&id);
}

/// Installs the routing subscriber once per process.
pub(crate) fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(RouteWriter);
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(fmt, RouteFilter))
            .try_init();
    });
}

/// Keeps an event if the filter of the emitting thread's proxy (or the default) does.
struct RouteFilter;

impl<S> Filter<S> for RouteFilter
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        match current() {
            Some(r) => Filter::<S>::enabled(&r.filter, meta, cx),
            None => Filter::<S>::enabled(default_filter(), meta, cx),
        }
    }

    fn callsite_enabled(&self, _meta: &'static Metadata<'static>) -> Interest {
        // Decided per thread, so never cached per callsite.
        Interest::sometimes()
    }
}

/// Writes each formatted line to the emitting thread's proxy buffer, else to stderr.
struct RouteWriter;

impl<'a> MakeWriter<'a> for RouteWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { route: current() }
    }
}

/// One event's output.
pub(crate) struct LineWriter {
    route: Option<Arc<Route>>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.route {
            Some(r) => {
                r.logs
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(buf));
                Ok(buf.len())
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
