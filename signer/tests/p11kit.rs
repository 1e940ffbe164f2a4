//! Real "process died" faults: every HSM is its own `p11-kit server` process (SoftHSM2 behind
//! it), the gateway loads `p11-kit-client.so` once per HSM. Killing a server (and its
//! per-connection child) is what a crashed HSM or HSM proxy looks like to the client
//! (`CKR_DEVICE_ERROR`); restarting it must bring the HSM back into rotation without a gateway
//! restart, and no request may fail meanwhile. Every signature is verified by `common::load`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, LoadReport, served_between};

const CLIENT: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so";
const HSMS: [(&str, &str); 4] = [
    ("east-1", "EAST-1"),
    ("east-2", "EAST-2"),
    ("west-1", "WEST-1"),
    ("west-2", "WEST-2"),
];
const KEY: &str = "ca-p256";
/// A signature answered up to this long after a kill may have been made before it.
const SETTLE: Duration = Duration::from_millis(500);
/// `served_by` times come from `load`'s own clock, started within a hair of ours.
const SLACK: Duration = Duration::from_millis(100);

/// One `p11-kit server` per HSM, each in its own process group (the server forks a child per
/// client connection: killing the group kills both). All killed on drop.
struct Servers {
    dir: tempfile::TempDir,
    running: BTreeMap<&'static str, Child>,
}

impl Servers {
    fn start_all() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("hsmgate-p11kit-")
            .tempdir()
            .expect("tempdir");
        let mut servers = Self {
            dir,
            running: BTreeMap::new(),
        };
        for (hsm, _) in HSMS {
            servers.start(hsm);
        }
        servers
    }

    fn socket(&self, hsm: &str) -> PathBuf {
        self.dir.path().join(format!("{hsm}.sock"))
    }

    /// Starts (or restarts) `hsm`'s server on its socket path and waits until it accepts.
    fn start(&mut self, hsm: &'static str) {
        use std::os::unix::process::CommandExt;
        let label = HSMS.iter().find(|(h, _)| *h == hsm).expect("known HSM").1;
        let socket = self.socket(hsm);
        // A killed server leaves its socket file behind.
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new("p11-kit")
            .arg("server")
            .arg("-f")
            .arg("-n")
            .arg(&socket)
            .arg("--provider")
            .arg(common::SOFTHSM)
            .arg(format!("pkcs11:token={label}"))
            .env("SOFTHSM2_CONF", &common::tokens().softhsm_conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("spawn p11-kit server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("p11-kit server for {hsm} exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "p11-kit server for {hsm}: no socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.running.insert(hsm, child);
    }

    /// SIGKILLs `hsm`'s server and its children (its process group).
    fn kill(&mut self, hsm: &str) {
        let mut child = self.running.remove(hsm).expect("server running");
        kill_group(&child);
        let _ = child.wait();
    }
}

fn kill_group(child: &Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in self.running.values_mut() {
            kill_group(child);
            let _ = child.wait();
        }
    }
}

/// The provisioned config with every HSM behind its own p11-kit server.
fn p11kit_config(servers: &Servers) -> String {
    let mut out = String::new();
    let mut replaced = 0;
    for line in common::tokens().config_text.lines() {
        if line.trim() == format!(r#"module = "{}""#, common::SOFTHSM) {
            out.push_str(&format!("module = \"{CLIENT}\"\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if let Some(label) = line
            .trim()
            .strip_prefix("token_label = \"")
            .and_then(|l| l.strip_suffix('"'))
        {
            let hsm = HSMS
                .iter()
                .find(|(_, l)| *l == label)
                .expect("known token")
                .0;
            out.push_str(&format!(
                "module_env = {{ P11_KIT_SERVER_ADDRESS = \"unix:path={}\" }}\n",
                servers.socket(hsm).display()
            ));
            replaced += 1;
        }
    }
    assert_eq!(replaced, 4, "expected four HSMs in:\n{out}");
    assert!(!out.contains(common::SOFTHSM), "{out}");
    out
}

/// Signatures `hsm` made so far, from the gateway's metrics.
async fn signed_by(gw: &Gateway, hsm: &str) -> u64 {
    let needle = format!("hsm=\"{hsm}\"");
    gw.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("hsmgate_hsm_signatures_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls the metrics until every HSM in `hsms` has signed since `baseline`, or `limit`.
async fn wait_serving(gw: &Gateway, hsms: &[&str], baseline: &[u64], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for (hsm, base) in hsms.iter().zip(baseline) {
            all &= signed_by(gw, hsm).await > *base;
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs batch load (4 tasks × 8) and unary load (2 tasks) until `stop`, as one report.
async fn mixed_load(gw: &Gateway, stop: tokio::sync::watch::Receiver<bool>) -> LoadReport {
    let (mut batch, unary) = tokio::join!(
        common::load(gw, KEY, 4, 8, stop.clone()),
        common::load(gw, KEY, 2, 1, stop)
    );
    batch.ok += unary.ok;
    batch.failed.extend(unary.failed);
    batch.served_by.extend(unary.served_by);
    batch.max_latency = batch.max_latency.max(unary.max_latency);
    batch.served_by.sort();
    batch
}

/// When each HSM first served at or after `from`.
fn first_served_after(report: &LoadReport, hsm: &str, from: Duration) -> Option<Duration> {
    report
        .served_by
        .iter()
        .find(|(t, h)| *t >= from && h == hsm)
        .map(|(t, _)| *t)
}

fn summary(name: &str, report: &LoadReport, phases: &[(&str, Duration, Duration)]) {
    eprintln!(
        "[{name}] ok={} failed={} max_latency={:?}",
        report.ok,
        report.failed.len(),
        report.max_latency
    );
    for (phase, from, to) in phases {
        eprintln!(
            "[{name}]   {phase:<22} {:>5}..{:>5} ms: {:?}",
            from.as_millis(),
            to.as_millis(),
            served_between(report, *from, *to)
        );
    }
}

fn assert_no_failures(report: &LoadReport, gw: &Gateway) {
    assert!(
        report.failed.is_empty(),
        "{} requests failed, first: {:#?}\ngateway logs:\n{}",
        report.failed.len(),
        &report.failed[..report.failed.len().min(5)],
        gw.logs()
    );
}

/// Gateway log lines mentioning `hsm`, for the summary.
fn hsm_log_lines(gw: &Gateway, hsm: &str) -> Vec<String> {
    let needle = format!("hsm={hsm}");
    gw.logs()
        .lines()
        .filter(|l| l.contains(&needle) && !l.contains("DEBUG"))
        .map(str::to_owned)
        .collect()
}

/// Kills `victims`' servers under load, restarts them, and checks nothing failed, the victims
/// served nothing while dead and came back within 5 s.
async fn kill_and_restart(name: &str, victims: &[&'static str]) {
    let mut servers = Servers::start_all();
    let gw = Gateway::spawn(&p11kit_config(&servers)).unwrap_or_else(|e| panic!("gateway: {e}"));
    gw.wait_available(KEY, 4, Duration::from_secs(20)).await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Instant::now();
    let load = mixed_load(&gw, stop_rx);
    let fault = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for hsm in victims {
            servers.kill(hsm);
        }
        let killed = start.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut baseline = Vec::new();
        for hsm in victims {
            baseline.push(signed_by(&gw, hsm).await);
        }
        let restart_at = start.elapsed();
        for hsm in victims {
            servers.start(hsm);
        }
        let restarted = start.elapsed();
        let back = wait_serving(&gw, victims, &baseline, Duration::from_secs(10)).await;
        // A little load with everybody back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop_tx.send(true);
        (killed, restart_at, restarted, back)
    };
    let (report, (killed, restart_at, restarted, back)) = tokio::join!(load, fault);
    let end = start.elapsed() + Duration::from_secs(60);

    summary(
        name,
        &report,
        &[
            ("before kill", Duration::ZERO, killed),
            ("kill..+0.5s", killed, killed + SETTLE),
            ("dead", killed + SETTLE, restart_at),
            ("restarted", restart_at, end),
        ],
    );
    for hsm in victims {
        for line in hsm_log_lines(&gw, hsm) {
            eprintln!("[{name}]   log: {line}");
        }
    }
    assert_no_failures(&report, &gw);
    assert!(report.ok > 100, "too little load: {}", report.ok);

    let before = served_between(&report, Duration::ZERO, killed);
    for hsm in victims {
        assert!(
            before.contains_key(*hsm),
            "{hsm} served nothing before the kill: {before:?}"
        );
        // The last signature the victim answered: how long after the kill it was still seen.
        let last = report
            .served_by
            .iter()
            .filter(|(t, h)| h == hsm && *t < restart_at)
            .map(|(t, _)| *t)
            .max();
        eprintln!(
            "[{name}] {hsm}: last signature before restart at {:?} ({:?} after the kill)",
            last,
            last.map(|t| t.saturating_sub(killed))
        );
    }
    let dead = served_between(
        &report,
        killed + SETTLE + SLACK,
        restart_at.saturating_sub(SLACK),
    );
    for hsm in victims {
        assert!(
            !dead.contains_key(*hsm),
            "{hsm} served while its server was dead: {dead:?}"
        );
    }
    assert!(
        dead.values().sum::<u64>() > 0,
        "nothing was served while {victims:?} were dead"
    );
    let survivors: Vec<&str> = HSMS
        .iter()
        .map(|(h, _)| *h)
        .filter(|h| !victims.contains(h))
        .collect();
    assert!(
        dead.keys().all(|h| survivors.contains(&h.as_str())),
        "unexpected HSM served while {victims:?} were dead: {dead:?}"
    );

    assert!(
        back,
        "{victims:?} did not serve again within 10 s of the restart; logs:\n{}",
        gw.logs()
    );
    for hsm in victims {
        let first = first_served_after(&report, hsm, restart_at).unwrap_or_else(|| {
            panic!("{hsm} never served after the restart; logs:\n{}", gw.logs())
        });
        let rejoin = first.saturating_sub(restarted);
        eprintln!(
            "[{name}] {hsm}: restart took {:?}; first signature {:?} after the restart",
            restarted - restart_at,
            rejoin
        );
        assert!(
            first < restarted + Duration::from_secs(5) + SLACK,
            "{hsm} took {rejoin:?} to serve again after the restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_hsm_process_fails_no_request_and_rejoins() {
    kill_and_restart("one-killed", &["east-1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_local_hsm_processes_killed_moves_traffic_to_the_other_datacenter() {
    kill_and_restart("both-local-killed", &["east-1", "east-2"]).await;
}
