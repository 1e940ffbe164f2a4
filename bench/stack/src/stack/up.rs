//! Bringing a stack up, in order, and what it offers once it is: [`StackInfo`], the addresses,
//! files and process ids a script or test needs (`hsmgate-stack up --env-file` writes them as
//! shell variables).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::files::{self, ConfigFile};
use super::{DevStack, StartedStack};
use crate::error::Error;

/// What a running stack offers, as `STACK_*` variables (see [`StackInfo::env_text`]).
#[derive(Clone, Debug, Default)]
pub struct StackInfo {
    vars: Vec<(String, String)>,
}

impl StackInfo {
    /// Sets `STACK_<name>`.
    pub fn set(&mut self, name: &str, value: impl std::fmt::Display) {
        let name = format!("STACK_{name}");
        let value = value.to_string();
        match self.vars.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name, value)),
        }
    }

    /// Sets `STACK_<name>` to `127.0.0.1:<port>`.
    pub fn set_addr(&mut self, name: &str, port: u16) {
        self.set(name, format!("127.0.0.1:{port}"));
    }

    /// Sets `STACK_<name>` to `<scheme>://127.0.0.1:<port><path>`.
    pub fn set_url(&mut self, name: &str, scheme: &str, port: u16, path: &str) {
        self.set(name, format!("{scheme}://127.0.0.1:{port}{path}"));
    }

    pub(crate) fn unset(&mut self, name: &str) {
        let name = format!("STACK_{name}");
        self.vars.retain(|(n, _)| *n != name);
    }

    /// The value of `STACK_<name>`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = format!("STACK_{name}");
        self.vars
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `STACK_NAME='value'` lines, for `. FILE` in a shell script.
    pub fn env_text(&self) -> String {
        self.vars
            .iter()
            .map(|(name, value)| format!("{name}='{}'\n", value.replace('\'', r"'\''")))
            .collect()
    }
}

impl DevStack {
    /// What the stack will offer, before anything is started (files, addresses, URLs).
    pub fn info(&self) -> StackInfo {
        let layout = self.layout();
        let ports = &self.ports;
        let mut info = StackInfo::default();
        info.set("DIR", layout.dir.display());
        info.set("SOFTHSM2_CONF", layout.softhsm_conf().display());
        info.set("TLS_DIR", layout.tls().display());
        info.set("ROOT_PEM", layout.root_pem().display());
        info.set("ISSUER_PEM", layout.issuer_pem().display());
        info.set("CA_CHAIN", layout.ca_chain().display());
        info.set("AUDIT_DIR", layout.audit().display());
        for file in ConfigFile::ALL {
            let name = format!("{}_CONFIG", file.name().to_uppercase());
            info.set(&name, layout.config(file).display());
        }
        let acme_scheme = if self.acme_tls.is_some() {
            "https"
        } else {
            "http"
        };
        info.set_addr("GATEWAY_ADDR", ports.gateway);
        info.set_url("GATEWAY_URL", "https", ports.gateway, "");
        info.set_addr("GATEWAY_METRICS", ports.gateway_metrics);
        info.set_addr("OCSP_ADDR", ports.responder);
        info.set_url("OCSP_URL", "http", ports.responder, "");
        info.set_addr("OCSP_METRICS", ports.responder_metrics);
        info.set_addr("ACME_ADDR", ports.acme);
        info.set_url("ACME_DIRECTORY", acme_scheme, ports.acme, "/directory");
        info.set_addr("ACME_METRICS", ports.acme_metrics);
        info.set_addr("PRESIGN_METRICS", ports.presign_metrics);
        info.set_addr("CRL_METRICS", ports.crl_metrics);
        info.set_addr("DNS_ADDR", ports.dns);
        info.set_url("DNS_MANAGEMENT", "http", ports.dns_management, "");
        info.set("HTTP01_PORT", ports.http01);
        info.set("TLSALPN01_PORT", ports.tls_alpn01);
        info.set(
            "PERSPECTIVE_ADDRS",
            ports
                .perspectives
                .map(|p| format!("127.0.0.1:{p}"))
                .join(" "),
        );
        info
    }

    /// Provisions the tokens, makes the mTLS certificates, writes the configs, starts the
    /// gateway, makes the CA through it, imports the example certificates, and starts every
    /// other service; `before_responder` runs just before the responder starts (the dev stack
    /// prints its guide there: the responder logs to the terminal after it). Each started
    /// process goes into `started` as soon as it runs, so that a failure stops what ran.
    pub fn up(
        &self,
        started: &mut StartedStack,
        stop: &AtomicBool,
        before_responder: impl FnOnce(&StackInfo),
    ) -> Result<StackInfo, Error> {
        let layout = self.layout();
        let mut info = self.info();
        std::fs::create_dir_all(&layout.dir).map_err(|e| Error::io("creating", &layout.dir, e))?;
        let dir = self.dir.display().to_string();
        let hsm_config = |args: &[&str]| -> Result<String, Error> {
            self.run("hsm-config", "hsm-config", args, None)
        };
        // mTLS: a dev CA, the gateway's certificate for 127.0.0.1, a certificate per client
        // (ocsp-presigner, ca-frontend, ceremony, bench). Kept across runs.
        hsm_config(&["dev-certs", &format!("{dir}/tls")])?;
        files::write_all(
            &self.root,
            &layout,
            &self.ports,
            self.acme_tls.as_ref(),
            &self.overrides,
        )?;
        let gateway_config = self.config(ConfigFile::Gateway).display().to_string();
        print!("{}", hsm_config(&["check", &gateway_config])?);
        print!(
            "{}",
            hsm_config(&[
                "provision",
                &gateway_config,
                "--public-keys",
                &format!("{dir}/public-keys"),
            ])?
        );

        let gateway = self.start(&self.gateway())?;
        let ready = gateway.ready().map(|r| r.line.clone()).unwrap_or_default();
        println!("gateway: {ready} (log: {dir}/signer.log)");
        info.set("PID_SIGNER", gateway.pid());
        started.processes.push(gateway);

        self.ceremony(stop)?;
        let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
        let chain = [read(&layout.issuer_pem()), read(&layout.root_pem())].concat();
        let chain_path = layout.ca_chain();
        std::fs::write(&chain_path, chain).map_err(|e| Error::io("writing", &chain_path, e))?;

        let ocsp_config = self.config(ConfigFile::Ocsp).display().to_string();
        print!(
            "{}",
            self.run(
                "ocsp",
                "hsmgate-ocsp",
                &[
                    "import",
                    "--config",
                    &ocsp_config,
                    "ocsp/examples/dev-certificates.txt"
                ],
                None,
            )?
        );
        let crl_url = self.run(
            "ocsp",
            "hsmgate-ocsp",
            &[
                "crl-urls",
                "--config",
                &ocsp_config,
                "--issuer",
                "dev-ca",
                "--serial",
                "1003",
            ],
            None,
        )?;
        info.set("DEV_CRL_URL", crl_url.trim());

        let services = self.services();
        let (responder, middle) = services.split_last().ok_or_else(|| Error::Step {
            step: "the table of services".into(),
            detail: "no responder".into(),
        })?;
        for service in middle {
            let process = self.start(service)?;
            info.set(&pid_name(&service.name), process.pid());
            started.processes.push(process);
        }
        before_responder(&info);
        let process = self.start(responder)?;
        info.set(&pid_name(&responder.name), process.pid());
        started.processes.push(process);
        Ok(info)
    }

    /// The CA: a root for the gateway's dev-root key and an intermediate for dev-p256, signed
    /// by the root, both through the gateway by the `ceremony` identity (the keys never leave
    /// the HSMs). Kept across runs of the dev stack; retried while the HSMs join the rotation.
    pub(super) fn ceremony(&self, stop: &AtomicBool) -> Result<(), Error> {
        let layout = self.layout();
        let non_empty = |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
        if non_empty(&layout.root_pem()) && non_empty(&layout.issuer_pem()) {
            return Ok(());
        }
        let gateway = format!("https://127.0.0.1:{}", self.ports.gateway);
        let (root_pem, issuer_pem) = (
            layout.root_pem().display().to_string(),
            layout.issuer_pem().display().to_string(),
        );
        let mut last = Ok(String::new());
        for _ in 0..50 {
            last = self.run(
                "ca-frontend",
                "ca-frontend",
                &[
                    "ceremony",
                    "--gateway",
                    &gateway,
                    "--root-key",
                    "dev-root",
                    "--intermediate-key",
                    "dev-p256",
                    "--root-out",
                    &root_pem,
                    "--intermediate-out",
                    &issuer_pem,
                ],
                Some("ceremony"),
            );
            if last.is_ok() || stop.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        last.map(|_| println!("CA:      root {root_pem}, intermediate {issuer_pem}"))
    }
}

/// `PID_PERSPECTIVE_DEV_A` for service `perspective-dev-a`.
pub(super) fn pid_name(service: &str) -> String {
    format!("PID_{}", service.to_uppercase().replace('-', "_"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::stack::Ports;

    #[test]
    fn the_env_file_quotes_values_for_the_shell() {
        let mut info = StackInfo::default();
        info.set("DIR", "/tmp/it's here");
        info.set(&pid_name("perspective-dev-a"), 42);
        assert_eq!(
            info.env_text(),
            "STACK_DIR='/tmp/it'\\''s here'\nSTACK_PID_PERSPECTIVE_DEV_A='42'\n"
        );
        assert_eq!(info.get("PID_PERSPECTIVE_DEV_A"), Some("42"));
    }

    #[test]
    fn the_info_names_the_stack_s_own_ports_and_files() {
        let ports = Ports::ephemeral().expect("free ports");
        let stack = DevStack::in_dir(Path::new("/checkout"), Path::new("/tmp/s"), ports.clone());
        let info = stack.info();
        assert_eq!(
            info.get("ACME_DIRECTORY"),
            Some(format!("http://127.0.0.1:{}/directory", ports.acme).as_str())
        );
        assert_eq!(info.get("OCSP_CONFIG"), Some("/tmp/s/ocsp.toml"));
        assert_eq!(info.get("SOFTHSM2_CONF"), Some("/tmp/s/softhsm2.conf"));
        assert_eq!(
            info.get("HTTP01_PORT"),
            Some(ports.http01.to_string().as_str())
        );
    }
}
