//! The development stack as one table of services (Boulder keeps one such table for
//! `start.py` and its integration tests): what `hsm-config/dev/run.sh` starts, in order.
//!
//! [`DevStack::up`] provisions the dev tokens, makes the dev certificates and CA, then starts
//! every [`Service`] of [`DevStack::services`] in order, waiting for a READY line where the
//! service prints one. [`StartedStack`] stops them all (SIGTERM; the gateway drains first) when
//! asked or dropped.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::binaries::binary;
use crate::error::Error;
use crate::process::{Log, Process, READY_TIMEOUT};

/// One long-running process of the dev stack.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its name in messages and the base of its files in the dev directory
    /// (`<name>.log`, `<name>.out`).
    pub name: String,
    /// The program: a workspace binary (`package`, `bin`) or a program on PATH.
    pub program: Program,
    pub args: Vec<OsString>,
    /// The gateway client identity whose certificate it uses (`HSMGATE_TLS_*`), if it calls
    /// the gateway.
    pub gateway_identity: Option<&'static str>,
    /// Waits for its READY line (and copies stdout to `<name>.out`).
    pub ready: bool,
    /// Where its stderr goes.
    pub log: ServiceLog,
    /// Its stdout kept in `<name>.out` (else discarded), for services that print READY
    /// without the stack waiting for it.
    pub keep_stdout: bool,
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
    /// `<dev>/<name>.log`.
    File,
    /// `<dev>/<name>.log`, stdout included (for programs with no READY line).
    FileWithStdout,
    /// The terminal.
    Terminal,
}

/// The development stack of one checkout: `hsm-config/examples/dev.toml`, its tokens and
/// files under `target/dev/`, every listener on its fixed dev port.
#[derive(Clone, Debug)]
pub struct DevStack {
    /// The workspace root; the example configs' relative paths resolve against it.
    pub root: PathBuf,
    /// `target/dev`, relative to `root` (as printed).
    pub dev: PathBuf,
}

impl DevStack {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            dev: PathBuf::from("target/dev"),
        }
    }

    /// `SOFTHSM2_CONF` of the dev tokens (absolute).
    pub fn softhsm_conf(&self) -> PathBuf {
        self.root.join(&self.dev).join("softhsm2.conf")
    }

    /// `HSMGATE_TLS_CA=… HSMGATE_TLS_CERT=… HSMGATE_TLS_KEY=…` of gateway client `identity`.
    pub fn tls_env(&self, identity: &str) -> Vec<(String, String)> {
        let tls = self.dev.join("tls");
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

    /// The services, in start order. The gateway first (everything signs through it); the
    /// OCSP responder last, on the terminal, once the rest is up and explained.
    pub fn services(&self) -> Vec<Service> {
        let ocsp = Program::Workspace {
            package: "ocsp",
            bin: "hsmgate-ocsp",
        };
        let ca = Program::Workspace {
            package: "ca-frontend",
            bin: "ca-frontend",
        };
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let mut services = vec![
            Service {
                name: "signer".into(),
                program: Program::Workspace {
                    package: "signer",
                    bin: "signer",
                },
                args: args(&["--config", "hsm-config/examples/dev.toml"]),
                gateway_identity: None,
                ready: true,
                log: ServiceLog::File,
                keep_stdout: true,
            },
            Service {
                name: "presign".into(),
                program: ocsp.clone(),
                args: args(&[
                    "presign",
                    "--config",
                    "ocsp/examples/dev.toml",
                    "--metrics-listen",
                    "127.0.0.1:9467",
                ]),
                gateway_identity: Some("ocsp-presigner"),
                ready: false,
                log: ServiceLog::File,
                keep_stdout: false,
            },
            Service {
                name: "crl-update".into(),
                program: ocsp.clone(),
                args: args(&[
                    "crl-update",
                    "--config",
                    "ocsp/examples/dev.toml",
                    "--metrics-listen",
                    "127.0.0.1:9468",
                ]),
                gateway_identity: Some("ocsp-presigner"),
                ready: false,
                log: ServiceLog::File,
                keep_stdout: false,
            },
            // Validation DNS for the ACME frontend: Pebble's challenge test server answers
            // every name with 127.0.0.1 (and serves the TXT records dns-01 clients set through
            // its management API).
            Service {
                name: "challtestsrv".into(),
                program: Program::External("pebble-challtestsrv"),
                args: crate::challtestsrv::args(
                    SocketAddr::from(([127, 0, 0, 1], 8053)),
                    SocketAddr::from(([127, 0, 0, 1], 8055)),
                )
                .into_iter()
                .map(OsString::from)
                .collect(),
                gateway_identity: None,
                ready: false,
                log: ServiceLog::FileWithStdout,
                keep_stdout: false,
            },
        ];
        // Three remote validation perspectives (BR §3.2.2.9) the frontend asks over mTLS:
        // each repeats every challenge and CAA check; here all three share the challenge DNS.
        for (name, port) in [("dev-a", 7101), ("dev-b", 7102), ("dev-c", 7103)] {
            services.push(Service {
                name: format!("perspective-{name}"),
                program: ca.clone(),
                args: vec![
                    "perspective".into(),
                    "--config".into(),
                    "ca-frontend/examples/perspective.toml".into(),
                    "--name".into(),
                    name.into(),
                    "--listen".into(),
                    format!("127.0.0.1:{port}").into(),
                ],
                gateway_identity: None,
                ready: false,
                log: ServiceLog::File,
                keep_stdout: true,
            });
        }
        services.push(Service {
            name: "acme".into(),
            program: ca,
            args: args(&["serve", "--config", "ca-frontend/examples/dev.toml"]),
            gateway_identity: Some("ca-frontend"),
            ready: false,
            log: ServiceLog::File,
            keep_stdout: true,
        });
        services.push(Service {
            name: "responder".into(),
            program: ocsp,
            args: args(&["serve", "--config", "ocsp/examples/dev.toml"]),
            gateway_identity: None,
            ready: false,
            log: ServiceLog::Terminal,
            keep_stdout: false,
        });
        services
    }

    /// A command for `program` in the workspace root, with the dev tokens' `SOFTHSM2_CONF`.
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
        let dir = self.root.join(&self.dev);
        let log_path = dir.join(format!("{}.log", service.name));
        let log = match service.log {
            ServiceLog::File => Log::File(log_path),
            ServiceLog::FileWithStdout => {
                let file = std::fs::File::create(&log_path)
                    .map_err(|e| Error::io("creating", &log_path, e))?;
                let copy = file
                    .try_clone()
                    .map_err(|e| Error::io("opening", &log_path, e))?;
                command.stdout(file).stderr(copy);
                return Process::spawn_as_configured(&service.name, command);
            }
            ServiceLog::Terminal => Log::Inherit,
        };
        if service.ready {
            let out = dir.join(format!("{}.out", service.name));
            Process::spawn_ready_tee(&service.name, command, log, Some(&out), READY_TIMEOUT)
        } else if service.log == ServiceLog::Terminal {
            command.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            Process::spawn_as_configured(&service.name, command)
        } else if service.keep_stdout {
            let out = dir.join(format!("{}.out", service.name));
            let file = std::fs::File::create(&out).map_err(|e| Error::io("creating", &out, e))?;
            command.stdout(file);
            let Log::File(path) = log else {
                return Process::spawn_as_configured(&service.name, command);
            };
            let file = std::fs::File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
            command.stderr(file);
            Process::spawn_as_configured(&service.name, command)
        } else {
            Process::spawn(&service.name, command, log)
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
    /// three perspectives on 7101-7103, the pre-signer and CRL updater on the gateway's mTLS.
    #[test]
    fn the_dev_stack_table_matches_what_run_sh_prints() {
        let stack = DevStack::new(Path::new("/checkout"));
        let services = stack.services();
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "signer",
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
        assert!(
            services[0].ready,
            "everything else signs through the gateway"
        );
        let ports: Vec<String> = services[4..7]
            .iter()
            .map(|s| s.args.last().map(|a| a.to_string_lossy().into_owned()))
            .map(Option::unwrap_or_default)
            .collect();
        assert_eq!(
            ports,
            ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
        );
        let identities: Vec<_> = services.iter().filter_map(|s| s.gateway_identity).collect();
        assert_eq!(
            identities,
            ["ocsp-presigner", "ocsp-presigner", "ca-frontend"]
        );
        assert_eq!(
            stack.tls_env_text("bench"),
            "HSMGATE_TLS_CA=target/dev/tls/ca.pem HSMGATE_TLS_CERT=target/dev/tls/bench.pem \
             HSMGATE_TLS_KEY=target/dev/tls/bench.key"
        );
    }
}
