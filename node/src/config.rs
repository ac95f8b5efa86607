//! Node configuration: built-in defaults, then `--config node.toml`, then `PODMESH_*`
//! environment variables, then command-line flags, each overriding the one before.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default QUIC listen address (the port SWIM implementations conventionally use).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7946";

/// Membership timing presets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Low-latency networks: probe every second.
    #[default]
    Lan,
    /// Wide-area networks: slower probes and longer suspicion.
    Wan,
}

/// Every setting of `podmesh node run`. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeFile {
    /// Expected node name; the name always comes from the certificate and a different one here
    /// is refused.
    pub name: Option<String>,
    /// Directory with ca.crt, node.crt and node.key.
    pub certs_dir: Option<PathBuf>,
    /// Directory for node.redb and podmesh.sock; default `$XDG_DATA_HOME/podmesh/<node>`.
    pub data_dir: Option<PathBuf>,
    /// QUIC listen address; default 0.0.0.0:7946.
    pub listen: Option<String>,
    /// Address other nodes reach this one at; default the listen address when it is specific.
    pub advertise: Option<String>,
    /// Seeds to join through (host:port).
    pub join: Vec<String>,
    /// Membership timing preset.
    pub preset: Option<Preset>,
    /// SHA-256 fingerprints of certificates to refuse; re-read on SIGHUP and
    /// `podmesh node reload`.
    pub blocklist: Vec<String>,
    /// Where to serve Prometheus metrics at `/metrics` (host:port); default none.
    pub metrics_listen: Option<String>,
    /// Seconds a peer handshake this node takes part in waits for a coordinator that
    /// membership has forgotten before it ends; default 600.
    pub participant_give_up_s: Option<u64>,
}

impl NodeFile {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("bad config {}: {e}", path.display()))
    }

    /// Applies `PODMESH_*` variables from `env` (a lookup, so tests need not touch the process
    /// environment). Lists are comma-separated.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(v) = env("PODMESH_NAME") {
            self.name = Some(v);
        }
        if let Some(v) = env("PODMESH_CERTS_DIR") {
            self.certs_dir = Some(v.into());
        }
        if let Some(v) = env("PODMESH_DATA_DIR") {
            self.data_dir = Some(v.into());
        }
        if let Some(v) = env("PODMESH_LISTEN") {
            self.listen = Some(v);
        }
        if let Some(v) = env("PODMESH_ADVERTISE") {
            self.advertise = Some(v);
        }
        if let Some(v) = env("PODMESH_JOIN") {
            self.join = list(v);
        }
        if let Some(v) = env("PODMESH_PRESET") {
            self.preset = Some(match v.as_str() {
                "lan" => Preset::Lan,
                "wan" => Preset::Wan,
                other => anyhow::bail!("PODMESH_PRESET must be lan or wan, not {other:?}"),
            });
        }
        if let Some(v) = env("PODMESH_BLOCKLIST") {
            self.blocklist = list(v);
        }
        if let Some(v) = env("PODMESH_METRICS_LISTEN") {
            self.metrics_listen = Some(v);
        }
        if let Some(v) = env("PODMESH_PARTICIPANT_GIVE_UP_S") {
            self.participant_give_up_s = Some(v.parse().map_err(|_| {
                anyhow::anyhow!(
                    "PODMESH_PARTICIPANT_GIVE_UP_S must be a number of seconds, not {v:?}"
                )
            })?);
        }
        Ok(())
    }
}

/// Resolves `host:port` to one socket address.
pub fn resolve(what: &str, addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("{what} {addr:?} is not a host:port address: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{what} {addr:?} resolves to no address"))
}

/// Where default data directories live: `$XDG_DATA_HOME/podmesh`, else
/// `$HOME/.local/share/podmesh`.
pub fn data_root() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| {
            anyhow::anyhow!("no --data-dir given and neither XDG_DATA_HOME nor HOME is set")
        })?;
    Ok(base.join("podmesh"))
}

/// The default data directory of `node`: `<data_root>/<node>`.
pub fn default_data_dir(node: &str) -> anyhow::Result<PathBuf> {
    Ok(data_root()?.join(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_a_valid_configuration() {
        // Every field is defaulted.
        let file: NodeFile = toml::from_str("").unwrap();
        assert_eq!(file, NodeFile::default());
    }

    #[test]
    fn unknown_fields_are_refused_rather_than_ignored() {
        // A typo must not silently fall back to a default.
        let err = toml::from_str::<NodeFile>("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file() {
        // PODMESH_* variables replace file values; lists split on commas.
        let mut file: NodeFile =
            toml::from_str("listen = \"127.0.0.1:1\"\njoin = [\"127.0.0.1:2\"]").unwrap();
        file.apply_env(|k| match k {
            "PODMESH_LISTEN" => Some("127.0.0.1:3".into()),
            "PODMESH_JOIN" => Some("127.0.0.1:4, 127.0.0.1:5".into()),
            "PODMESH_PRESET" => Some("wan".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(file.listen.as_deref(), Some("127.0.0.1:3"));
        assert_eq!(file.join, ["127.0.0.1:4", "127.0.0.1:5"]);
        assert_eq!(file.preset, Some(Preset::Wan));
        let bad = file.apply_env(|k| (k == "PODMESH_PRESET").then(|| "fast".into()));
        assert!(bad.unwrap_err().to_string().contains("lan or wan"));
    }
}
