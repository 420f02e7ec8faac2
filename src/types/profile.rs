//! Add-on profiles: optional groups of add-ons a control-plane image may carry
//! (`imgbuild build --profile`) and a cluster may turn on (`addons.profiles` in
//! cluster.yaml). The set is closed: each profile's credentials are known here.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Prometheus, Alertmanager and Grafana (kube-prometheus-stack); the backend scraped.
    Monitoring,
    /// An OpenTelemetry collector shipping node and pod logs to an OTLP endpoint.
    Logging,
    /// Argo CD with an `Application` for the backend chart.
    Gitops,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Monitoring, Profile::Logging, Profile::Gitops];

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Monitoring => "monitoring",
            Profile::Logging => "logging",
            Profile::Gitops => "gitops",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The cluster.yaml fields (under `addons.<profile>`) a cluster that turns the profile
    /// on must set.
    pub fn required(self) -> &'static [&'static str] {
        match self {
            Profile::Logging => &["endpoint", "token"],
            Profile::Gitops => &["repo_url"],
            Profile::Monitoring => &[],
        }
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
