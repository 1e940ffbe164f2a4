//! The multi-instance deployment on one machine (issue 19): what the architecture says runs in
//! production, every part more than once, on loopback.
//!
//! ```text
//!  dc-east: east-1, east-2        dc-west: west-1, west-2     (SoftHSM2 tokens, each behind its
//!      │ p11-kit server ×2            │ p11-kit server ×2      own `p11-kit server` process)
//!      └──────────────┬───────────────┘
//!        gateway-east (local dc-east)   gateway-west (local dc-west)
//!              │  every caller knows both gateways (URLs separated by commas)
//!   acme-1, acme-2 ── PostgreSQL (a schema of its own)
//!   presign, crl-update-1, crl-update-2, responder-1, responder-2 ── Redis Cluster
//!                                                    (3 masters, 3 replicas)
//! ```
//!
//! [`MultiStack::up`] starts it all and returns [`StackInfo`] with every address and process id,
//! so that a drill can kill one part (a gateway, a Redis master, one datacenter's p11-kit
//! servers) and watch the rest.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::files::{self, Layout};
use super::redis_cluster::RedisCluster;
use super::{DevStack, Program, Service, ServiceLog, StackInfo, StartedStack};
use crate::configs;
use crate::error::Error;
use crate::stack::Ports;

/// The four HSMs: (datacenter, name, token label).
pub const HSMS: [(&str, &str, &str); 4] = [
    ("dc-east", "east-1", "EAST-1"),
    ("dc-east", "east-2", "EAST-2"),
    ("dc-west", "west-1", "WEST-1"),
    ("dc-west", "west-2", "WEST-2"),
];

/// PostgreSQL as the machine runs it (trust auth on loopback).
pub const POSTGRES: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test";

/// The multi-instance deployment in one directory, on ephemeral ports.
#[derive(Clone, Debug)]
pub struct MultiStack {
    /// The first instance of each part, and the shared pieces (tokens, certificates, CA).
    pub base: DevStack,
    /// The second instance of each part (gateway-west, responder-2, acme-2, crl-update-2)
    /// listens on these (the first on `base.ports`).
    second: Ports,
    /// The Redis Cluster of the OCSP and CRL data.
    pub redis: RedisCluster,
    /// The PostgreSQL schema of the frontends' records.
    pub pg_schema: String,
}

impl MultiStack {
    pub fn new(root: &Path, dir: &Path) -> Result<Self, Error> {
        let ports = Ports::ephemeral()?;
        let second = Ports::ephemeral_besides(&ports.all())?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Ok(Self {
            base: DevStack::in_dir(root, dir, ports),
            second,
            redis: RedisCluster::choose_ports()?,
            pg_schema: format!("hsmgate_{}_{stamp}", std::process::id()),
        })
    }

    fn layout(&self) -> Layout {
        self.base.layout()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.layout().dir.join(name)
    }

    fn gateway_urls(&self, scheme: &str) -> String {
        [self.base.ports.gateway, self.second.gateway]
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .join(",")
    }

    /// `PostgreSQL` URL of the frontends' schema.
    pub fn postgres_url(&self) -> String {
        format!("{POSTGRES} options=-csearch_path={}", self.pg_schema)
    }

    /// The gateway config: the dev keys, clients and grants over four HSMs in two datacenters,
    /// `local` first. Reached through p11-kit servers, or (for provisioning) SoftHSM2 directly.
    fn gateway_config(
        &self,
        local: &str,
        listen: u16,
        metrics: u16,
        audit: &str,
        through_p11kit: bool,
    ) -> Result<hsm_config::Config, Error> {
        let layout = self.layout();
        let mut config = files::gateway(&self.base.root, &layout, &self.base.ports)?;
        config.gateway.listen = loopback(listen);
        config.gateway.metrics_listen = Some(loopback(metrics));
        config.gateway.local_datacenter = local.to_owned();
        config.audit.dir = layout.dir.join(audit);
        config.datacenters = ["dc-east", "dc-west"]
            .map(|dc| hsm_config::Datacenter {
                name: dc.to_owned(),
                hsms: HSMS
                    .iter()
                    .filter(|(d, _, _)| *d == dc)
                    .map(|(_, name, label)| {
                        let pin = layout.dir.join("pins").join(format!("{name}.pin"));
                        let mut hsm = configs::softhsm(name, label, &pin, 2);
                        if through_p11kit {
                            hsm.module = PathBuf::from(configs::P11KIT_CLIENT);
                            hsm.module_env.insert(
                                "P11_KIT_SERVER_ADDRESS".into(),
                                format!("unix:path={}", self.socket(name).display()),
                            );
                        }
                        hsm
                    })
                    .collect(),
            })
            .into();
        for key in &mut config.keys {
            key.hsms = HSMS.iter().map(|(_, name, _)| (*name).to_owned()).collect();
        }
        Ok(config)
    }

    fn socket(&self, hsm: &str) -> PathBuf {
        self.path("p11").join(format!("{hsm}.sock"))
    }

    /// The OCSP config of a process whose responder (if it is one) listens on `responder`: the Redis Cluster store, both gateways, the CRL
    /// URLs on responder-1. The status worklist (which certificates exist, which are revoked:
    /// what the pre-signer refreshes and the CRL updaters list) lives in the store's SQLite
    /// file, so every OCSP process and both frontends share one file (WAL, one machine): with
    /// a file each, the frontends' revocations never reached the CRL updaters. Across machines
    /// the worklist must move to a shared database — not built yet.
    fn ocsp_config(&self, responder: (u16, u16)) -> Result<ocsp::config::Config, Error> {
        let mut config = files::ocsp(&self.base.root, &self.layout(), &self.base.ports)?;
        config.responder.listen = loopback(responder.0);
        config.responder.metrics_listen = Some(loopback(responder.1));
        config.store = ocsp::config::Store::Redis {
            urls: self.redis.urls(),
            cluster: true,
            replica: self.path("ocsp-worklist.sqlite"),
        };
        config.presigner.gateway = self.gateway_urls("http");
        // Drills check that a revocation reaches its CRL shard: within seconds, not the dev
        // config's minute (the BR allow 24 h).
        for crl in issuer_crls(&mut config) {
            crl.revocation_delay_secs = 5;
        }
        Ok(config)
    }

    /// An ACME frontend on `listen`: PostgreSQL, both gateways, the shared OCSP config for
    /// publishing.
    fn acme_config(&self, listen: u16, metrics: u16) -> Result<ca_frontend::config::Config, Error> {
        let mut config = files::acme(&self.base.root, &self.layout(), &self.base.ports)?;
        config.server.listen = loopback(listen);
        config.server.base_url = format!("http://127.0.0.1:{listen}");
        config.server.metrics_listen = Some(loopback(metrics));
        config.gateway.url = self.gateway_urls("https");
        config.ocsp.config = self.path("ocsp.toml");
        config.db = ca_frontend::config::Db::Postgres {
            url: self.postgres_url(),
        };
        // Load generators and drills order thousands of certificates under one registered
        // domain from a handful of accounts: the dev limits (50 a domain a week) would refuse
        // them, as they should in production.
        config.limits.orders_per_account_per_hour = 4_000_000_000;
        config.limits.certificates_per_domain_per_week = 4_000_000_000;
        config.limits.accounts_per_hour = 4_000_000_000;
        Ok(config)
    }

    /// Writes every config of the deployment.
    fn write_configs(&self) -> Result<(), Error> {
        use files::{ConfigFile, finish};
        let (b, s) = (&self.base.ports, &self.second);
        let gateways = [
            ("gateway-provision", "dc-east", b, "audit", false),
            ("gateway-east", "dc-east", b, "audit-east", true),
            ("gateway-west", "dc-west", s, "audit-west", true),
        ];
        for (name, local, ports, audit, through_p11kit) in gateways {
            let config = self.gateway_config(
                local,
                ports.gateway,
                ports.gateway_metrics,
                audit,
                through_p11kit,
            )?;
            let to = self.path(&format!("{name}.toml"));
            finish(&config, ConfigFile::Gateway, &[], &to)?;
        }
        // One OCSP config for every OCSP process and both frontends (they share the store and
        // its worklist); responder-2 differs only in its listeners.
        for (name, ports) in [("ocsp", b), ("ocsp-responder-2", s)] {
            let config = self.ocsp_config((ports.responder, ports.responder_metrics))?;
            let to = self.path(&format!("{name}.toml"));
            finish(&config, ConfigFile::Ocsp, &[], &to)?;
        }
        for (i, ports) in [(1, b), (2, s)] {
            let config = self.acme_config(ports.acme, ports.acme_metrics)?;
            let to = self.path(&format!("acme-{i}.toml"));
            finish(&config, ConfigFile::Acme, &[], &to)?;
        }
        let perspective = files::perspective(&self.base.root, &self.layout(), &self.base.ports)?;
        let to = self.layout().config(ConfigFile::Perspective);
        finish(&perspective, ConfigFile::Perspective, &[], &to)
    }

    /// Starts the whole deployment; each process goes into `started` as soon as it runs.
    pub fn up(&self, started: &mut StartedStack, stop: &AtomicBool) -> Result<StackInfo, Error> {
        let stack = &self.base;
        let layout = self.layout();
        std::fs::create_dir_all(layout.dir.join("p11"))
            .map_err(|e| Error::io("creating", layout.dir.join("p11"), e))?;
        let mut info = stack.info();
        let dir = stack.dir.display().to_string();
        stack.run(
            "hsm-config",
            "hsm-config",
            &["dev-certs", &format!("{dir}/tls")],
            None,
        )?;

        // Redis Cluster: three masters, a replica each.
        let redis_dir = self.path("redis");
        std::fs::create_dir_all(&redis_dir).map_err(|e| Error::io("creating", &redis_dir, e))?;
        for i in 0..self.redis.ports.len() {
            let process = stack.start(&self.redis.service(i, &redis_dir))?;
            info.set(&format!("PID_REDIS_{}", i + 1), process.pid());
            started.processes.push(process);
        }
        self.redis.create()?;
        info.set("REDIS_ADDRS", self.redis.addrs());
        // PostgreSQL: a schema of this deployment's own.
        psql(&format!("CREATE SCHEMA {}", self.pg_schema))?;
        info.set("PG_SCHEMA", &self.pg_schema);
        info.set("PG_URL", self.postgres_url());

        self.write_configs()?;
        let provision = self.path("gateway-provision.toml").display().to_string();
        print!(
            "{}",
            stack.run(
                "hsm-config",
                "hsm-config",
                &[
                    "provision",
                    &provision,
                    "--public-keys",
                    &format!("{dir}/public-keys")
                ],
                None,
            )?
        );
        // Each HSM behind its own p11-kit server, in its own process group (a drill kills the
        // group: the server and the child it forked for each gateway).
        for (_, name, label) in HSMS {
            let service = self.p11kit_service(name, label);
            let process = stack.start(&service)?;
            info.set(&super::up::pid_name(&service.name), process.pid());
            started.processes.push(process);
            wait_until(
                &format!("p11-kit server for {name}"),
                Duration::from_secs(10),
                || std::os::unix::net::UnixStream::connect(self.socket(name)).is_ok(),
            )?;
        }
        for name in ["gateway-east", "gateway-west"] {
            let process = stack.start(&self.gateway_service(name))?;
            info.set(&super::up::pid_name(name), process.pid());
            started.processes.push(process);
        }
        info.set("GATEWAY_URLS", self.gateway_urls("https"));
        info.set_addr("GATEWAY_WEST_ADDR", self.second.gateway);
        info.set_addr("GATEWAY_WEST_METRICS", self.second.gateway_metrics);
        // The CA, through gateway-east.
        stack.ceremony(stop)?;
        let read = |p: &Path| std::fs::read(p).unwrap_or_default();
        let chain = [read(&layout.issuer_pem()), read(&layout.root_pem())].concat();
        std::fs::write(layout.ca_chain(), chain)
            .map_err(|e| Error::io("writing", layout.ca_chain(), e))?;
        let presign_config = self.path("ocsp.toml").display().to_string();
        print!(
            "{}",
            stack.run(
                "ocsp",
                "hsmgate-ocsp",
                &[
                    "import",
                    "--config",
                    &presign_config,
                    "ocsp/examples/dev-certificates.txt"
                ],
                None,
            )?
        );

        for service in self.services().iter().chain(&self.shared_services()) {
            let process = stack.start(service)?;
            info.set(&super::up::pid_name(&service.name), process.pid());
            started.processes.push(process);
        }
        let s = &self.second;
        info.set_addr("OCSP2_ADDR", s.responder);
        info.set_url("OCSP2_URL", "http", s.responder, "");
        info.set_addr("OCSP2_METRICS", s.responder_metrics);
        info.set_addr("ACME2_ADDR", s.acme);
        info.set_url("ACME2_DIRECTORY", "http", s.acme, "/directory");
        info.set_addr("ACME2_METRICS", s.acme_metrics);
        info.set_addr("CRL2_METRICS", s.crl_metrics);
        for name in ["GATEWAY", "OCSP", "ACME", "PERSPECTIVE"] {
            info.unset(&format!("{name}_CONFIG"));
        }
        info.set("AUDIT_DIR", self.path("audit-east").display());
        info.set("AUDIT_WEST_DIR", self.path("audit-west").display());
        Ok(info)
    }

    /// The services on the store and the database, in start order (the shared challenge DNS and
    /// perspectives come from [`DevStack::services`]).
    fn services(&self) -> Vec<Service> {
        let (b, s) = (&self.base.ports, &self.second);
        let ocsp = self.path("ocsp.toml");
        vec![
            Service::ocsp_worker("presign", &ocsp, b.presign_metrics),
            Service::ocsp_worker("crl-update-1", &ocsp, b.crl_metrics),
            Service::ocsp_worker("crl-update-2", &ocsp, s.crl_metrics),
            Service::responder("responder-1", &ocsp),
            Service::responder("responder-2", &self.path("ocsp-responder-2.toml")),
            Service::acme("acme-1", &self.path("acme-1.toml")),
            Service::acme("acme-2", &self.path("acme-2.toml")),
        ]
    }

    /// HSM `name` (token `label`) behind its own `p11-kit server`, in a process group of its
    /// own (a drill stops or kills the group: the server and the child it forked per gateway).
    fn p11kit_service(&self, name: &str, label: &str) -> Service {
        let args: [OsString; 7] = [
            "server".into(),
            "-f".into(),
            "-n".into(),
            self.socket(name).into(),
            "--provider".into(),
            configs::SOFTHSM_MODULE.into(),
            format!("pkcs11:token={label}").into(),
        ];
        Service {
            ready: false,
            log: ServiceLog::FileWithStdout,
            own_process_group: true,
            ..Service::new(
                &format!("p11kit-{name}"),
                Program::External("p11-kit"),
                args,
            )
        }
    }

    /// `gateway-east` or `gateway-west`.
    fn gateway_service(&self, name: &str) -> Service {
        Service::gateway(name, &self.path(&format!("{name}.toml")))
    }

    /// The challenge DNS and the three perspectives, shared by both frontends (the dev stack's).
    fn shared_services(&self) -> Vec<Service> {
        self.base
            .services()
            .into_iter()
            .filter(|s| s.name == "challtestsrv" || s.name.starts_with("perspective-"))
            .collect()
    }

    /// Every service of the deployment by name, for restarting one that exited.
    fn service_named(&self, name: &str) -> Option<Service> {
        let redis_dir = self.path("redis");
        let redis = (0..self.redis.ports.len()).map(|i| self.redis.service(i, &redis_dir));
        let p11kit = HSMS
            .iter()
            .map(|(_, hsm, label)| self.p11kit_service(hsm, label));
        let gateways = ["gateway-east", "gateway-west"].map(|g| self.gateway_service(g));
        redis
            .chain(p11kit)
            .chain(gateways)
            .chain(self.services())
            .chain(self.shared_services())
            .find(|s| s.name == name)
    }

    /// Drops the deployment's PostgreSQL schema (after the processes stopped).
    pub fn drop_schema(&self) -> Result<(), Error> {
        psql(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.pg_schema))
    }

    /// Starts `name` again, as systemd's `Restart=always` would in production: the new process
    /// and the name of its `PID_*` variable.
    pub fn restart(&self, name: &str) -> Result<(crate::Process, String), Error> {
        let service = self.service_named(name).ok_or_else(|| Error::Step {
            step: format!("restarting {name}"),
            detail: "no such service".into(),
        })?;
        let process = self.base.start(&service)?;
        Ok((process, super::up::pid_name(name)))
    }
}

fn issuer_crls(
    config: &mut ocsp::config::Config,
) -> impl Iterator<Item = &mut ocsp::config::CrlConfig> {
    config.issuers.iter_mut().filter_map(|i| i.crl.as_mut())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Runs `sql` in PostgreSQL's `test` database.
fn psql(sql: &str) -> Result<(), Error> {
    let output = std::process::Command::new("psql")
        .args([POSTGRES, "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| Error::Step {
            step: format!("psql -c {sql}"),
            detail: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Step {
            step: format!("psql -c {sql}"),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

pub(super) fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), Error> {
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > limit {
            return Err(Error::Step {
                step: format!("waiting for {what}"),
                detail: format!("not ready after {limit:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
