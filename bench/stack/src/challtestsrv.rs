//! pebble-challtestsrv, the fake DNS every ACME validation here resolves through (every name is
//! 127.0.0.1 unless a test says otherwise through its management API), and the `tied` child
//! that tests keep in statics.
//!
//! The ACME tests start their servers once per test binary and keep them in a static; statics
//! are never dropped, so a plain child would outlive the run. A [`tied`] child is run by a shell
//! that kills it when its stdin — a pipe only the test binary holds — closes: at the binary's
//! exit, however it happens.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Error;

/// How long the management API may take to listen after the spawn.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A command for `program` that dies with this process (see the module's paragraph). After the
/// child is gone the shell removes `$TIED_CLEANUP`, if the command sets it (a gateway's
/// directory).
pub fn tied(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#""$@" & child=$!; read _; kill "$child"; wait "$child"; [ -z "$TIED_CLEANUP" ] || rm -rf "$TIED_CLEANUP""#)
        .arg("sh")
        .arg(program)
        .stdin(Stdio::piped());
    command
}

/// pebble-challtestsrv's arguments: DNS on `dns`, the management API on `management`, and none
/// of its own challenge servers (the tests and the dev stack answer challenges themselves).
pub fn args(dns: SocketAddr, management: SocketAddr) -> Vec<String> {
    let mut args = vec![
        "-dns01".to_string(),
        dns.to_string(),
        "-management".to_string(),
        management.to_string(),
    ];
    for disabled in ["-http01", "-https01", "-tlsalpn01", "-defaultIPv6"] {
        args.extend([disabled.to_string(), String::new()]);
    }
    args
}

/// A running pebble-challtestsrv on fresh loopback ports, tied to this process.
#[derive(Debug)]
pub struct ChallTestSrv {
    /// Its DNS server (UDP and TCP).
    pub dns: SocketAddr,
    /// Its management API (`/add-a`, `/add-caa`, …).
    pub management: SocketAddr,
    /// The tying shell: keep it (its stdin pipe) for as long as the server is needed.
    pub child: Child,
}

impl ChallTestSrv {
    /// Starts one and waits until its management API accepts connections.
    pub fn start_tied() -> Result<Self, Error> {
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (dns, management) = (loopback(free_port()?), loopback(free_port()?));
        let program = "pebble-challtestsrv";
        let child = tied(program)
            .args(args(dns, management))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| Error::Spawn {
                program: PathBuf::from(program),
                source,
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(management).is_err() {
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    name: program.into(),
                    exit: None,
                    reason: format!("its management API {management} did not listen"),
                    log: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            dns,
            management,
            child,
        })
    }
}

/// A loopback port free at the time of asking (the caller binds it soon after).
pub fn free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|source| Error::io("binding an ephemeral port on", "127.0.0.1", source))
}
