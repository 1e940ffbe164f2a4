//! A whole hsmgate stack as one table of services (Boulder keeps one such table for
//! `start.py` and its integration tests): what `hsm-config/dev/run.sh` starts, and what the
//! end-to-end script and the benches start in a directory of their own on ephemeral ports.
//!
//! [`DevStack::up`] provisions the tokens, makes the mTLS certificates, writes the four configs
//! from the examples ([`files`]), starts the gateway, makes the CA through it, then starts every
//! other [`Service`] of [`DevStack::services`] in order, waiting for each READY line.
//! [`StartedStack`] stops them all (SIGTERM; the gateway drains first) when asked or dropped.
//!
//! ```text
//! provision ─> dev-certs ─> configs ─> gateway ─READY─> ceremony (root, intermediate)
//!   ─> import ─> presign, crl-update, challtestsrv, perspectives ×3, acme ─READY─> responder
//! ```

mod files;
mod multi;
mod ports;
mod redis_cluster;
mod up;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

pub use files::{ConfigFile, Layout, Override, apply_overrides, rewrite as rewrite_config};
pub use multi::MultiStack;
pub use ports::Ports;
pub use up::StackInfo;

use crate::binaries::binary;
use crate::error::Error;
use crate::process::{Log, Process, READY_TIMEOUT};

/// One long-running process of the stack.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its name in messages and the base of its files in the stack's directory
    /// (`<name>.log`, `<name>.out`).
    pub name: String,
    /// The program: a workspace binary (`package`, `bin`) or a program on PATH.
    pub program: Program,
    pub args: Vec<OsString>,
    /// The gateway client identity whose certificate it uses (`HSMGATE_TLS_*`), if it calls
    /// the gateway.
    pub gateway_identity: Option<&'static str>,
    /// Waits for its READY line (stdout is copied to `<name>.out`).
    pub ready: bool,
    /// Where its stderr goes.
    pub log: ServiceLog,
    /// In a process group of its own, so that a drill can kill it with its children (a
    /// `p11-kit server` forks one per client connection).
    pub own_process_group: bool,
}

const SIGNER: Program = Program::Workspace {
    package: "signer",
    bin: "signer",
};
const OCSP: Program = Program::Workspace {
    package: "ocsp",
    bin: "hsmgate-ocsp",
};
const CA_FRONTEND: Program = Program::Workspace {
    package: "ca-frontend",
    bin: "ca-frontend",
};

impl Service {
    /// `program` with `args`, waited for until READY, its log in a file, calling no gateway:
    /// what most services are; the others change a field.
    pub fn new(
        name: &str,
        program: Program,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args: args.into_iter().map(Into::into).collect(),
            gateway_identity: None,
            ready: true,
            log: ServiceLog::File,
            own_process_group: false,
        }
    }

    /// A gateway (`signer --config CONFIG`).
    pub fn gateway(name: &str, config: &Path) -> Self {
        Self::new(name, SIGNER, [OsString::from("--config"), config.into()])
    }

    /// `hsmgate-ocsp presign` or `crl-update` (`name` starts with the command) on `config`,
    /// metrics on `metrics_port`, calling the gateway as `ocsp-presigner`.
    pub fn ocsp_worker(name: &str, config: &Path, metrics_port: u16) -> Self {
        let command = if name.starts_with("presign") {
            "presign"
        } else {
            "crl-update"
        };
        let args: [OsString; 5] = [
            command.into(),
            "--config".into(),
            config.into(),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}").into(),
        ];
        Self {
            gateway_identity: Some("ocsp-presigner"),
            ..Self::new(name, OCSP, args)
        }
    }

    /// An OCSP responder (`hsmgate-ocsp serve --config CONFIG`).
    pub fn responder(name: &str, config: &Path) -> Self {
        Self::new(name, OCSP, serve_args(config))
    }

    /// An ACME frontend (`ca-frontend serve --config CONFIG`), calling the gateway as
    /// `ca-frontend`.
    pub fn acme(name: &str, config: &Path) -> Self {
        Self {
            gateway_identity: Some("ca-frontend"),
            ..Self::new(name, CA_FRONTEND, serve_args(config))
        }
    }
}

/// `serve --config CONFIG`.
fn serve_args(config: &Path) -> [OsString; 3] {
    ["serve".into(), "--config".into(), config.into()]
}

/// Where a service's program comes from.
#[derive(Clone, Debug)]
pub enum Program {
    /// A binary of the workspace, built if missing.
    Workspace {
        package: &'static str,
        bin: &'static str,
    },
    /// A program found on PATH (installed by `hsm-config/dev/setup.sh`).
    External(&'static str),
}

/// Where a service's log goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceLog {
    /// `<dir>/<name>.log`; stdout in `<dir>/<name>.out`.
    File,
    /// `<dir>/<name>.log`, stdout included (for programs with no READY line).
    FileWithStdout,
    /// The terminal (the dev stack's responder, started last).
    Terminal,
}

/// One stack: the example configs moved into `dir` and onto `ports`, with `overrides`.
#[derive(Clone, Debug)]
pub struct DevStack {
    /// The workspace root; services run there.
    pub root: PathBuf,
    /// The stack's directory as given (relative to `root`, or absolute), as printed.
    pub dir: PathBuf,
    pub ports: Ports,
    /// `--set` changes to the written configs.
    pub overrides: Vec<Override>,
    /// The responder logs to the terminal (the interactive dev stack) instead of its file.
    pub responder_on_terminal: bool,
    /// The ACME frontend serves HTTPS with this certificate and key (PEM) instead of HTTP.
    pub acme_tls: Option<(PathBuf, PathBuf)>,
}

impl DevStack {
    /// The development stack of the checkout at `root`: `target/dev`, the dev ports, the
    /// responder on the terminal.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            dir: PathBuf::from("target/dev"),
            ports: Ports::dev(),
            overrides: Vec::new(),
            responder_on_terminal: true,
            acme_tls: None,
        }
    }

    /// A stack of its own in `dir` on `ports`, every log in a file (scripts and benches).
    pub fn in_dir(root: &Path, dir: &Path, ports: Ports) -> Self {
        Self {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
            ports,
            overrides: Vec::new(),
            responder_on_terminal: false,
            acme_tls: None,
        }
    }

    /// Where its files are (absolute).
    pub fn layout(&self) -> Layout {
        Layout {
            dir: self.root.join(&self.dir),
        }
    }

    /// `SOFTHSM2_CONF` of the stack's tokens (absolute).
    pub fn softhsm_conf(&self) -> PathBuf {
        self.layout().softhsm_conf()
    }

    /// `HSMGATE_TLS_CA=… HSMGATE_TLS_CERT=… HSMGATE_TLS_KEY=…` of gateway client `identity`.
    pub fn tls_env(&self, identity: &str) -> Vec<(String, String)> {
        let tls = self.dir.join("tls");
        vec![
            (
                "HSMGATE_TLS_CA".into(),
                tls.join("ca.pem").display().to_string(),
            ),
            (
                "HSMGATE_TLS_CERT".into(),
                tls.join(format!("{identity}.pem")).display().to_string(),
            ),
            (
                "HSMGATE_TLS_KEY".into(),
                tls.join(format!("{identity}.key")).display().to_string(),
            ),
        ]
    }

    /// [`Self::tls_env`] as a shell prefix, for the commands the stack prints.
    pub fn tls_env_text(&self, identity: &str) -> String {
        self.tls_env(identity)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A config file of the stack, as given (relative to `root` or absolute).
    pub fn config(&self, file: ConfigFile) -> PathBuf {
        self.dir.join(file.file_name())
    }

    /// The services after the gateway, in start order; the OCSP responder last.
    pub fn services(&self) -> Vec<Service> {
        let ocsp = self.config(ConfigFile::Ocsp);
        let mut services = vec![
            Service::ocsp_worker("presign", &ocsp, self.ports.presign_metrics),
            Service::ocsp_worker("crl-update", &ocsp, self.ports.crl_metrics),
            // Validation DNS for the ACME frontend: Pebble's challenge test server answers
            // every name with 127.0.0.1 (and serves the TXT records dns-01 clients set through
            // its management API).
            Service {
                log: ServiceLog::FileWithStdout,
                ready: false,
                ..Service::new(
                    "challtestsrv",
                    Program::External("pebble-challtestsrv"),
                    crate::challtestsrv::args(
                        SocketAddr::from(([127, 0, 0, 1], self.ports.dns)),
                        SocketAddr::from(([127, 0, 0, 1], self.ports.dns_management)),
                    ),
                )
            },
        ];
        // Three remote validation perspectives (BR §3.2.2.9) the frontend asks over mTLS:
        // each repeats every challenge and CAA check; here all three share the challenge DNS.
        for (name, port) in ["dev-a", "dev-b", "dev-c"]
            .into_iter()
            .zip(self.ports.perspectives)
        {
            let config = self.config(ConfigFile::Perspective);
            services.push(Service::new(
                &format!("perspective-{name}"),
                CA_FRONTEND,
                [
                    "perspective".into(),
                    "--config".into(),
                    config.into_os_string(),
                    "--name".into(),
                    name.into(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}").into(),
                ],
            ));
        }
        services.push(Service::acme("acme", &self.config(ConfigFile::Acme)));
        let responder = Service::responder("responder", &ocsp);
        services.push(if self.responder_on_terminal {
            Service {
                ready: false,
                log: ServiceLog::Terminal,
                ..responder
            }
        } else {
            responder
        });
        services
    }

    /// The gateway: the first service, which everything else signs through.
    pub fn gateway(&self) -> Service {
        Service::gateway("signer", &self.config(ConfigFile::Gateway))
    }

    /// A command for `program` in the workspace root, with the stack's `SOFTHSM2_CONF`.
    pub fn command(&self, program: &Program) -> Result<Command, Error> {
        let path = match program {
            Program::Workspace { package, bin } => binary(package, bin)?,
            Program::External(name) => PathBuf::from(name),
        };
        let mut command = Command::new(path);
        command
            .current_dir(&self.root)
            .env("SOFTHSM2_CONF", self.softhsm_conf());
        Ok(command)
    }

    /// Runs a one-shot workspace command to completion; its stdout, or an error with its
    /// stderr.
    pub fn run(
        &self,
        package: &'static str,
        bin: &'static str,
        args: &[&str],
        identity: Option<&str>,
    ) -> Result<String, Error> {
        let mut command = self.command(&Program::Workspace { package, bin })?;
        command.args(args);
        if let Some(identity) = identity {
            command.envs(self.tls_env(identity));
        }
        let step = format!("{bin} {}", args.join(" "));
        let output = command.output().map_err(|e| Error::Step {
            step: step.clone(),
            detail: e.to_string(),
        })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::Step {
                step,
                detail: format!(
                    "{}\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    /// Starts `service`; waits for its READY line if it prints one.
    pub fn start(&self, service: &Service) -> Result<Process, Error> {
        let mut command = self.command(&service.program)?;
        command.args(&service.args);
        if let Some(identity) = service.gateway_identity {
            command.envs(self.tls_env(identity));
        }
        if service.own_process_group {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        let dir = self.layout().dir;
        let log_path = dir.join(format!("{}.log", service.name));
        let out_path = dir.join(format!("{}.out", service.name));
        let create =
            |path: &Path| std::fs::File::create(path).map_err(|e| Error::io("creating", path, e));
        match service.log {
            ServiceLog::Terminal => {
                command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
                Process::spawn_as_configured(&service.name, command)
            }
            ServiceLog::FileWithStdout => {
                let file = create(&log_path)?;
                let copy = file
                    .try_clone()
                    .map_err(|e| Error::io("opening", &log_path, e))?;
                command.stdout(file).stderr(copy);
                Process::spawn_as_configured(&service.name, command)
            }
            ServiceLog::File if service.ready => Process::spawn_ready_tee(
                &service.name,
                command,
                Log::File(log_path),
                Some(&out_path),
                READY_TIMEOUT,
            ),
            ServiceLog::File => {
                command
                    .stdout(create(&out_path)?)
                    .stderr(create(&log_path)?);
                Process::spawn_as_configured(&service.name, command)
            }
        }
    }
}

/// The running services of a stack; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug, Default)]
pub struct StartedStack {
    pub processes: Vec<Process>,
}

impl StartedStack {
    /// Waits until one of the services exits (or `stop` says so); which one, and how.
    pub fn wait_any(&mut self, stop: impl Fn() -> bool) -> Option<(String, ExitStatus)> {
        loop {
            for process in &mut self.processes {
                if let Some(status) = process.try_exited() {
                    return Some((process.name().to_owned(), status));
                }
            }
            if stop() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM to every service at once, then waits for each (SIGKILL after 15 s: the gateway
    /// drains for up to its `drain_ms`).
    pub fn stop_all(&mut self) {
        for process in &self.processes {
            let _ = process.signal("TERM");
        }
        for process in self.processes.iter_mut().rev() {
            process.stop(Duration::from_secs(15));
        }
    }
}

impl Drop for StartedStack {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is what run.sh's header promises: the gateway first, the responder last, the
    /// three perspectives on their ports, the pre-signer and CRL updater on the gateway's mTLS.
    #[test]
    fn the_dev_stack_table_matches_what_run_sh_prints() {
        let stack = DevStack::new(Path::new("/checkout"));
        let services = stack.services();
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "presign",
                "crl-update",
                "challtestsrv",
                "perspective-dev-a",
                "perspective-dev-b",
                "perspective-dev-c",
                "acme",
                "responder"
            ]
        );
        assert_eq!(
            stack.gateway().args,
            ["--config", "target/dev/gateway.toml"]
        );
        let listens: Vec<String> = services[3..6]
            .iter()
            .map(|s| s.args.last().map(|a| a.to_string_lossy().into_owned()))
            .map(Option::unwrap_or_default)
            .collect();
        assert_eq!(
            listens,
            ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
        );
        let identities: Vec<_> = services.iter().filter_map(|s| s.gateway_identity).collect();
        assert_eq!(
            identities,
            ["ocsp-presigner", "ocsp-presigner", "ca-frontend"]
        );
        assert_eq!(services.last().map(|s| s.log), Some(ServiceLog::Terminal));
        assert_eq!(
            stack.tls_env_text("bench"),
            "HSMGATE_TLS_CA=target/dev/tls/ca.pem HSMGATE_TLS_CERT=target/dev/tls/bench.pem \
             HSMGATE_TLS_KEY=target/dev/tls/bench.key"
        );
    }

    /// A stack in a directory of its own: every service on that stack's ports and configs,
    /// the responder in a log file and waited for.
    #[test]
    fn a_stack_in_its_own_directory_uses_its_ports_and_configs() {
        let ports = Ports::ephemeral().expect("free ports");
        let stack = DevStack::in_dir(Path::new("/checkout"), Path::new("/tmp/s"), ports.clone());
        let services = stack.services();
        let args: Vec<String> = services
            .iter()
            .flat_map(|s| s.args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect();
        for port in [
            ports.presign_metrics,
            ports.crl_metrics,
            ports.dns,
            ports.dns_management,
        ]
        .into_iter()
        .chain(ports.perspectives)
        {
            assert!(
                args.iter().any(|a| a.ends_with(&format!(":{port}"))),
                "port {port} in none of {args:?}"
            );
        }
        assert!(args.contains(&"/tmp/s/ocsp.toml".to_owned()));
        assert!(!args.iter().any(|a| a.contains("examples")));
        let responder = services.last().expect("a responder");
        assert_eq!((responder.log, responder.ready), (ServiceLog::File, true));
    }
}
