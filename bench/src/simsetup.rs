//! Modelled HSMs for the gateway: **the one place where hsm-bench writes a gateway
//! configuration** (keep it so: it is built as the typed [`Config`] in [`gateway_config`] and
//! serialized by the stack kit, so a schema change fails to compile here, not at start-up),
//! the SoftHSM2 tokens behind it, and hsm-sim's control file (timing model and knockouts).
//!
//! Also reads back which timing model an existing configuration's hsm-sim HSMs run under, so
//! that every report made on stand-in signatures says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use hsm_config::{
    Audit, AuditFailure, Batching, Client, ClientLimits, Config, Datacenter, Dispatch, Gateway,
    Grant, Hsm, InsecurePlaintext, Key, KeyAlgorithm, Operation, PinSource, Timeouts,
};
use hsm_config::{ProvisionOptions, provision};
use hsm_sim::{ControlState, Model, SignatureMode};
use serde::Serialize;

/// The key every modelled HSM holds (a clone, as Luna cloning makes).
pub const KEY: &str = "capacity-p256";

/// What the gateway in front of the modelled HSMs looks like.
#[derive(Clone, Debug)]
pub struct SimGateway {
    /// The PKCS#11 module of every HSM: hsm-sim.
    pub module: PathBuf,
    pub hsms: u32,
    pub sessions: u32,
    pub worker_chunk: u32,
}

/// A prepared directory: tokens, configuration, control file.
#[derive(Clone, Debug)]
pub struct SimSetup {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub softhsm_conf: PathBuf,
    pub control: PathBuf,
    /// Token labels, in configuration order (`SIM-1`, `SIM-2`, …).
    pub labels: Vec<String>,
}

impl SimSetup {
    /// Where [`Self::spawn_gateway`]'s gateway logs.
    pub fn gateway_log(&self) -> PathBuf {
        self.dir.join("signer.log")
    }

    /// Starts `signer` on this setup's configuration, with its tokens and control file, logging
    /// to [`Self::gateway_log`].
    pub fn spawn_gateway(&self, signer: &Path) -> Result<crate::gateway::SpawnedGateway> {
        crate::gateway::SpawnedGateway::spawn(
            signer,
            &self.config,
            &self.gateway_log(),
            &[
                ("SOFTHSM2_CONF", self.softhsm_conf.as_os_str()),
                ("HSMSIM_CONTROL", self.control.as_os_str()),
            ],
        )
    }
}

/// The hsm-sim module to load: `given`, else `libhsm_sim.so` beside this executable (where
/// `cargo build` puts both); an error that says how to build it if there is none.
pub fn sim_module(given: Option<&PathBuf>) -> Result<PathBuf> {
    let sim = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find hsm-bench's own path")?
            .parent()
            .map(|d| d.join("libhsm_sim.so"))
            .context("hsm-bench has no directory")?,
    };
    if !sim.is_file() {
        bail!(
            "no hsm-sim module at {} (build it: cargo build --release -p hsm-sim; or --sim PATH)",
            sim.display()
        );
    }
    Ok(sim)
}

/// Token label of HSM number `i` (0-based).
pub fn label(i: u32) -> String {
    format!("SIM-{}", i + 1)
}

/// Each modelled HSM's `max_in_flight`: 64 signatures a session, at least the default 4,096.
fn hsm_max_in_flight(g: &SimGateway) -> u32 {
    (g.sessions * 64).max(4096)
}

/// The gateway configuration: one datacenter `sim` with `hsms` HSMs behind hsm-sim, listening
/// on an ephemeral loopback port without a metrics listener, one P-256 key cloned into all.
/// Typed, so that a schema change is a compile error here rather than a file the gateway
/// refuses at start-up.
pub fn gateway_config(g: &SimGateway, pin_file: &Path) -> Config {
    let names: Vec<String> = (0..g.hsms).map(|i| format!("sim-{}", i + 1)).collect();
    let hsms = names
        .iter()
        .zip(0..)
        .map(|(name, i)| Hsm {
            name: name.clone(),
            module: g.module.clone(),
            token_label: label(i),
            pin: PinSource::File(pin_file.to_path_buf()),
            sessions: g.sessions,
            max_in_flight: hsm_max_in_flight(g),
            module_env: BTreeMap::new(),
        })
        .collect();
    Config {
        gateway: Gateway {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            local_datacenter: "sim".into(),
            tls: None,
            // Plain text on loopback: the capacity model measures the gateway's dispatch, and
            // hsm-bench is its only caller.
            insecure_plaintext: Some(InsecurePlaintext {
                client: "bench".into(),
            }),
        },
        timeouts: Timeouts {
            hsm_call_ms: 1000,
            default_deadline_ms: 10_000,
            probe_interval_ms: 200,
            drain_ms: 2000,
        },
        batching: Batching {
            // At most what the HSMs hold in flight together (validation refuses more).
            max_request_items: (u64::from(g.hsms) * u64::from(hsm_max_in_flight(g))).min(10_000)
                as usize,
            worker_chunk: g.worker_chunk as usize,
            ..Batching::default()
        },
        dispatch: Dispatch::default(),
        datacenters: vec![Datacenter {
            name: "sim".into(),
            hsms,
        }],
        keys: vec![Key {
            name: KEY.into(),
            label: KEY.into(),
            algorithm: KeyAlgorithm::EcdsaP256,
            hsms: names,
            check_payload: None,
            allow_unchecked_payloads: Some(
                "benchmark key: raw signatures and the drill's issuer certificate".into(),
            ),
        }],
        clients: vec![Client {
            name: "bench".into(),
            subject: None,
            spki_sha256: None,
            grants: vec![Grant {
                keys: vec![KEY.into()],
                operations: vec![Operation::SignRaw, Operation::SignOcsp, Operation::SignCrl],
            }],
            limits: ClientLimits::default(),
        }],
        audit: Audit {
            dir: "audit".into(),
            max_file_bytes: 64 << 20,
            on_failure: AuditFailure::default(),
            commit_delay_us: hsm_config::DEFAULT_AUDIT_COMMIT_DELAY_US,
            preallocate_bytes: hsm_config::DEFAULT_AUDIT_PREALLOCATE_BYTES,
            bench_unaudited: false,
        },
        base_dir: PathBuf::new(),
    }
}

/// [`gateway_config`] as TOML, with a first line saying who wrote it.
pub fn gateway_config_text(g: &SimGateway, pin_file: &Path) -> Result<String> {
    let text = hsmgate_stack::configs::to_toml(&gateway_config(g, pin_file))?;
    Ok(format!(
        "# Written by hsm-bench: {} modelled HSM(s) behind hsm-sim.\n{text}",
        g.hsms
    ))
}

/// Writes the configuration into `dir` and provisions its tokens (a private SoftHSM2 store
/// in `dir/tokens`, the key generated once and cloned into every token).
pub fn prepare(dir: &Path, g: &SimGateway) -> Result<SimSetup> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(dir)?;
    let config = dir.join("gateway.toml");
    let text = gateway_config_text(g, &dir.join("user.pin"))?;
    std::fs::write(&config, &text).with_context(|| format!("cannot write {}", config.display()))?;
    let parsed = Config::load(&config)?;
    let softhsm_conf = dir.join("softhsm2.conf");
    provision(&parsed, &ProvisionOptions::new(&softhsm_conf))
        .context("provisioning the modelled HSMs' SoftHSM2 tokens")?;
    Ok(SimSetup {
        control: dir.join("control"),
        labels: (0..g.hsms).map(label).collect(),
        softhsm_conf,
        config,
        dir,
    })
}

/// The `model` line for every token.
pub fn model_line(units: u32, rate: f64, dist: &str, real: bool) -> String {
    format!(
        "* model units={units} rate={rate} dist={dist} signature={}\n",
        if real { "real" } else { "stand-in" }
    )
}

/// Replaces the control file atomically (write, then rename), as hsm-sim asks.
pub fn write_control(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

/// Parses a control file's model lines, refusing bad ones (hsm-sim would skip them).
pub fn parse_models(text: &str) -> Result<ControlState> {
    let (state, warnings) = ControlState::parse(text);
    if !warnings.is_empty() {
        bail!("control file: {}", warnings.join("; "));
    }
    Ok(state)
}

/// One hsm-sim HSM of a configuration and its timing model, for reports.
#[derive(Clone, Debug, Serialize)]
pub struct SimModelReport {
    pub hsm: String,
    pub token_label: String,
    pub control_file: Option<String>,
    /// The model line in force when the run started; `None`: forwarding at SoftHSM2's speed.
    pub model: Option<String>,
    pub rated_per_s: Option<f64>,
    pub p99_latency_us: Option<f64>,
    pub stand_in_signatures: bool,
}

/// The models of a configuration's hsm-sim HSMs (none if it uses no hsm-sim). The control
/// file is the HSM's `module_env` `HSMSIM_CONTROL`, else `control`, else hsm-bench's own
/// environment's.
pub fn describe_models(config: &Config, control: Option<&Path>) -> Vec<SimModelReport> {
    let mut out = Vec::new();
    for dc in &config.datacenters {
        for hsm in &dc.hsms {
            let module = hsm.module_path(&config.base_dir);
            let is_sim = module
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains("hsm_sim"));
            if !is_sim {
                continue;
            }
            let control = hsm
                .module_env
                .get("HSMSIM_CONTROL")
                .map(PathBuf::from)
                .or_else(|| control.map(Path::to_path_buf))
                .or_else(|| std::env::var_os("HSMSIM_CONTROL").map(PathBuf::from));
            let model: Option<Model> = control
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .and_then(|text| ControlState::parse(&text).0.model_for(&hsm.token_label));
            out.push(SimModelReport {
                hsm: hsm.name.clone(),
                token_label: hsm.token_label.clone(),
                control_file: control.map(|p| p.display().to_string()),
                model: model.map(|m| m.to_string()),
                rated_per_s: model.map(|m| m.rated_per_s()),
                p99_latency_us: model.map(|m| m.quantile(0.99).as_secs_f64() * 1e6),
                stand_in_signatures: model.is_some_and(|m| m.signature == SignatureMode::StandIn),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_is_valid_under_the_schema() {
        let g = SimGateway {
            module: PathBuf::from("/opt/hsm/libhsm_sim.so"),
            hsms: 2,
            sessions: 32,
            worker_chunk: 4,
        };
        let text = gateway_config_text(&g, Path::new("/tmp/x/user.pin")).expect("serializes");
        let config = Config::parse(&text, Path::new("gateway.toml"), PathBuf::from("/tmp/x"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.datacenters[0].hsms.len(), 2);
        assert_eq!(config.datacenters[0].hsms[1].token_label, "SIM-2");
        assert_eq!(config.batching.worker_chunk, 4);
        let key = config.key(KEY).expect("the key");
        assert_eq!(key.hsms, vec!["sim-1", "sim-2"]);
    }

    #[test]
    fn model_lines_parse_in_hsm_sim() {
        let state = parse_models(&model_line(10, 10_000.0, "exp", false)).expect("valid");
        let m = state.model_for("SIM-1").expect("a model for every token");
        assert_eq!(m.signature, SignatureMode::StandIn);
        assert!((m.rated_per_s() - 10_000.0).abs() < 1e-6);
        assert!(parse_models("* model dist=uniform").is_err());
    }
}
