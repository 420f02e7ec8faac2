//! Pod Security Standards levels (`privileged`, `baseline`, `restricted`), as the
//! PodSecurity admission plugin and its namespace labels spell them.

use serde::{Deserialize, Serialize};

/// A Pod Security Standards level. Ordered from the strictest to the most permissive,
/// so the level a namespace needs for several workloads is their `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurity {
    Restricted,
    /// The cluster-wide default the admission configuration enforces.
    #[default]
    Baseline,
    Privileged,
}

impl PodSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurity::Restricted => "restricted",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Privileged => "privileged",
        }
    }
}

impl std::fmt::Display for PodSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
