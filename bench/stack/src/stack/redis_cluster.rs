//! A Redis Cluster of its own for the multi-instance deployment: six `redis-server` nodes on
//! loopback (three masters, a replica each), created with `redis-cli --cluster create`, without
//! persistence, and a node timeout of 2 s so that a drill sees a failover in seconds.

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use super::multi::wait_until;
use super::{Program, Service, ServiceLog};
use crate::error::Error;

/// The six nodes' ports (each port + 10000 is its cluster bus).
#[derive(Clone, Debug)]
pub struct RedisCluster {
    pub ports: [u16; 6],
}

impl RedisCluster {
    /// Six ports below the ephemeral range whose bus ports are free too.
    pub fn choose_ports() -> Result<Self, Error> {
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        let mut ports = Vec::new();
        let mut candidate = 20_000 + (std::process::id() % 2_000) as u16 * 4;
        while ports.len() < 6 {
            if candidate >= 30_000 {
                return Err(Error::Step {
                    step: "choosing Redis ports".into(),
                    detail: "no six free ports (and bus ports) in 20000-29999".into(),
                });
            }
            if free(candidate) && free(candidate + 10_000) {
                ports.push(candidate);
            }
            candidate += 1;
        }
        let mut out = [0; 6];
        out.copy_from_slice(&ports);
        Ok(Self { ports: out })
    }

    /// `redis://127.0.0.1:PORT` of every node (the store's seed list).
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// `127.0.0.1:PORT …`, for the env file.
    pub fn addrs(&self) -> String {
        self.ports.map(|p| format!("127.0.0.1:{p}")).join(" ")
    }

    /// Node `i` (0-based) as a service named `redis-<i+1>`, its files under `dir`.
    pub fn service(&self, i: usize, dir: &Path) -> Service {
        let port = self.ports[i % 6];
        let args: [OsString; 16] = [
            "--port".into(),
            port.to_string().into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            format!("nodes-{port}.conf").into(),
            "--cluster-node-timeout".into(),
            "2000".into(),
        ];
        Service {
            ready: false,
            log: ServiceLog::FileWithStdout,
            ..Service::new(
                &format!("redis-{}", i + 1),
                Program::External("redis-server"),
                args,
            )
        }
    }

    /// Once every node answers: `redis-cli --cluster create` over the six (a replica per
    /// master), then waits until every node says `cluster_state:ok`.
    pub fn create(&self) -> Result<(), Error> {
        for port in self.ports {
            wait_until("redis-server", Duration::from_secs(10), || {
                redis_cli(port, &["ping"]).is_ok_and(|out| out.trim() == "PONG")
            })?;
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.ports.map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"].map(String::from));
        let step = || "redis-cli --cluster create".to_owned();
        let output = std::process::Command::new("redis-cli")
            .args(&args)
            .output()
            .map_err(|e| Error::Step {
                step: step(),
                detail: e.to_string(),
            })?;
        if !output.status.success() {
            return Err(Error::Step {
                step: step(),
                detail: String::from_utf8_lossy(&output.stdout).into_owned(),
            });
        }
        for port in self.ports {
            wait_until("cluster_state:ok", Duration::from_secs(20), || {
                redis_cli(port, &["cluster", "info"])
                    .is_ok_and(|out| out.contains("cluster_state:ok"))
            })?;
        }
        Ok(())
    }
}

fn redis_cli(port: u16, args: &[&str]) -> Result<String, std::io::Error> {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
