//! Network namespaces for the capture tests (root only; skipped with a printed reason
//! otherwise), on the topology builder shared with `meshctl bench`
//! ([`mesh_dataplane::netns`]): a pod per test namespace ([`NetNs`]), pods joined by a veth pair
//! ([`link_pods`]) or attached to a bridge ([`switch`]).

/// A network namespace created for one test and deleted when dropped (even on failure),
/// with loopback up: a [`mesh_dataplane::netns::Pod`] named `<name>-<pid>`. Requires root;
/// [`NetNs::create`] returns `None` (after printing why) otherwise, so the test can skip.
pub struct NetNs {
    pub name: String,
    pod: mesh_dataplane::netns::Pod,
}

impl NetNs {
    pub fn create(name: &str) -> Option<NetNs> {
        if let Err(e) = mesh_dataplane::netns::check_available() {
            eprintln!("SKIPPED: {e}");
            return None;
        }
        let name = format!("{name}-{}", std::process::id());
        let pod = mesh_dataplane::netns::Pod::create(&name)
            .unwrap_or_else(|e| panic!("ip netns add {name}: {e}"));
        Some(NetNs { name, pod })
    }

    /// The namespace as a pod of the shared topology builder ([`mesh_dataplane::netns`]).
    pub fn pod(&self) -> &mesh_dataplane::netns::Pod {
        &self.pod
    }

    /// Runs `cmd` inside the namespace; panics on failure.
    pub fn run(&self, cmd: &[&str]) {
        self.pod
            .exec(cmd)
            .unwrap_or_else(|e| panic!("{cmd:?} in {}: {e}", self.name));
    }

    /// Runs `f` on a thread that entered the namespace, with its own current-thread runtime:
    /// every socket it opens lives in the namespace.
    pub fn block_on<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        self.pod
            .run(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f())
            })
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A multi-thread runtime whose worker threads live in the namespace: run socket work
    /// with `rt.block_on(rt.spawn(fut))` (a spawned task runs on a worker; `block_on` alone
    /// would run the future on the calling thread, outside the namespace).
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        self.pod.runtime(2).unwrap()
    }
}

/// A "switch" namespace (`<name>-<pid>`) with a bridge that pods attach to
/// ([`mesh_dataplane::netns::Switch::attach`]); `None` (after printing why) without root.
pub fn switch(name: &str) -> Option<mesh_dataplane::netns::Switch> {
    if let Err(e) = mesh_dataplane::netns::check_available() {
        eprintln!("SKIPPED: {e}");
        return None;
    }
    let name = format!("{name}-{}", std::process::id());
    Some(
        mesh_dataplane::netns::Switch::create(&name)
            .unwrap_or_else(|e| panic!("switch {name}: {e}")),
    )
}

/// Two pods joined by a veth pair, `va` in `a` with `addr_a` and `vb` in `b` with `addr_b`
/// (`10.0.0.2/24`, `fd00::2/64`); panics on failure.
pub fn link_pods(a: &NetNs, addr_a: &str, b: &NetNs, addr_b: &str) {
    mesh_dataplane::netns::link(a.pod(), "va", &[addr_a], b.pod(), "vb", &[addr_b])
        .unwrap_or_else(|e| panic!("veth between {} and {}: {e}", a.name, b.name));
}
