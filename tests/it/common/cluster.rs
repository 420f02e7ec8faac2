//! `imgbuild cluster init` as the tests run it: the demo cluster (`--name demo --endpoint
//! 10.0.0.10:6443`, the CLI's own defaults for everything else) plus the few options a test
//! varies, so that a change to `cluster init`'s flags is made in one place.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Output};

/// A `cluster init` to run into `dir` (the cluster directory: `dir/cluster.yaml`,
/// `dir/secrets`). Start with [`cluster_init`], add options, then [`ClusterInit::ok`] or
/// [`ClusterInit::output`].
pub struct ClusterInit {
    dir: PathBuf,
    name: String,
    endpoint: String,
    args: Vec<OsString>,
    seed: Option<String>,
}

/// The demo cluster's `cluster init` into `dir`.
pub fn cluster_init(dir: impl Into<PathBuf>) -> ClusterInit {
    ClusterInit {
        dir: dir.into(),
        name: "demo".into(),
        endpoint: "10.0.0.10:6443".into(),
        args: Vec::new(),
        seed: None,
    }
}

impl ClusterInit {
    /// `--name` instead of `demo` (it prefixes every node name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }

    /// `--endpoint` instead of `10.0.0.10:6443`.
    pub fn endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// `--control-planes` and `--workers`.
    pub fn nodes(self, control_planes: u32, workers: u32) -> Self {
        let (cp, w) = (control_planes.to_string(), workers.to_string());
        self.args(["--control-planes", cp.as_str(), "--workers", w.as_str()])
    }

    /// `--external-lb`: the endpoint is a load balancer run elsewhere (no kube-vip), which
    /// more than one control plane needs unless the test gives a VIP interface.
    pub fn external_lb(self) -> Self {
        self.args(["--external-lb"])
    }

    /// Static addresses on the demo LAN: `--node-cidr 10.0.0.0/24 --interface ens3 --dns 10.0.0.2`.
    pub fn lan(self) -> Self {
        self.args(["--node-cidr", "10.0.0.0/24", "--interface", "ens3", "--dns", "10.0.0.2"])
    }

    /// More arguments, as given.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Secrets from a RNG seeded with `seed` (test builds only) instead of OS randomness:
    /// the same secrets on every run, for snapshots.
    pub fn seed(mut self, seed: &str) -> Self {
        self.seed = Some(seed.into());
        self
    }

    /// The command, not yet run (for a test that adds to its environment).
    pub fn command(&self) -> Command {
        let mut c = super::bin();
        c.args(["cluster", "init", "--name", &self.name, "--endpoint", &self.endpoint]);
        c.args(&self.args).arg("--dir").arg(&self.dir);
        if let Some(seed) = &self.seed {
            c.env(imgbuild::cluster::pki::TEST_SEED_ENV, seed);
        }
        c
    }

    /// Run it, whatever the outcome.
    pub fn output(&self) -> Output {
        let mut c = self.command();
        c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"))
    }

    /// Run it; it must succeed. The cluster.yaml it wrote.
    pub fn ok(&self) -> PathBuf {
        super::ok(&self.output());
        self.dir.join("cluster.yaml")
    }
}
