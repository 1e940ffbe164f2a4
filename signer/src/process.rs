//! Running the gateway: listeners, gRPC services (signer, health, reflection), `/metrics`,
//! and the signals operators use — SIGHUP reloads the configuration, SIGTERM drains and stops.
//!
//! The gRPC listener speaks mTLS (`[gateway.tls]`): the handshake requires a client
//! certificate chaining to `client_ca`, so a caller without one, or with one from another CA,
//! never reaches a service — health and reflection included. Plain text exists only with
//! `[gateway.insecure_plaintext]` on a loopback address (validation refuses anything else),
//! and the gateway says so loudly at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hsm_config::Config;
use hsmgate_signer_api::v1::signer_server::SignerServer;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::server::TcpIncoming;

use crate::audit;
use crate::error::Error;
use crate::grpc::SignerService;
use crate::metrics::{self, Metrics};
use crate::routing::Gateway;

/// The target of this module's log events: the module was `server` until issue 14, and log
/// filters (`RUST_LOG=signer::server=…`) and tests/logging.rs name that target.
const LOG_TARGET: &str = "signer::server";

/// The gRPC service name the health service reports on.
pub const SERVICE_NAME: &str = "hsmgate.signer.v1.Signer";

/// Runs the gateway on `config` (loaded from `config_path`, which SIGHUP re-reads) until
/// SIGTERM or SIGINT. Prints one `READY grpc=ADDR metrics=ADDR` line on stdout once listening,
/// so scripts and tests can use port 0.
pub async fn run(config_path: PathBuf, config: Config) -> Result<(), Error> {
    let metrics = Metrics::new();
    let tls = server_tls(&config)?;
    let audit = audit::Sink::open(&config, &config_path, metrics.clone())?;
    let audit_handle = audit.clone();
    let gateway = Gateway::start(&config, metrics.clone());

    let grpc_listener = TcpListener::bind(config.gateway.listen).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let metrics_listener = match config.gateway.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let metrics_addr: Option<SocketAddr> = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // Set first on SIGTERM: health turns NOT_SERVING while the server still accepts, so load
    // balancers move away before the listener closes.
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let wait_shutdown = {
        let rx = shutdown_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };

    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(listener, metrics.clone(), wait_shutdown()));
    }

    // Health: SERVING while at least one HSM is in rotation.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    {
        let gateway = gateway.clone();
        let mut stop = draining_rx.clone();
        tokio::spawn(async move {
            let mut serving = None;
            loop {
                let up = !*stop.borrow() && gateway.router().hsms.iter().any(|h| h.in_rotation());
                if serving != Some(up) {
                    let status = if up {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health_reporter
                        .set_service_status(SERVICE_NAME, status)
                        .await;
                    health_reporter.set_service_status("", status).await;
                    serving = Some(up);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => {}
                }
            }
        });
    }

    // Reflection in both versions: grpcurl and grpcio-reflection's client still speak
    // v1alpha, newer tools v1 (issue 13).
    let reflection_error = |e: tonic_reflection::server::Error| Error::Hsm {
        hsm: String::new(),
        detail: format!("reflection: {e}"),
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hsmgate_signer_api::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(reflection_error)?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(hsmgate_signer_api::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(reflection_error)?;
    // Requests larger than the configured batch can need are refused before decoding
    // (OUT_OF_RANGE); set at start-up, so a reload's new max_request_items applies at the next
    // restart. Responses are a signature per item.
    // A `sign-crl` grant grows it to one CRL of `batching.max_crl_bytes`.
    let max_crl = config.max_crl_message_bytes();
    let max_message =
        crate::grpc::max_message_bytes_with_crl(config.batching.max_request_items, max_crl);
    let signer =
        SignerServer::new(SignerService::new(gateway.clone(), audit).with_max_crl_bytes(max_crl))
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(64 << 20);

    // Nagle off on accepted sockets: with it, small unary replies wait for delayed ACKs
    // (~40 ms p99). `Server::tcp_nodelay` does not apply to a listener we bind ourselves.
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => {
            builder = builder.tls_config(tls).map_err(|e| Error::Tls {
                field: "gateway.tls",
                detail: e.to_string(),
            })?;
        }
        None => {
            let client = config
                .gateway
                .insecure_plaintext
                .as_ref()
                .map_or("", |p| p.client.as_str());
            tracing::warn!(target: LOG_TARGET,
                listen = %grpc_addr,
                client,
                "INSECURE: the signing API speaks PLAIN TEXT with NO CLIENT AUTHENTICATION \
                 ([gateway.insecure_plaintext]); every local process can sign as client `{client}`. \
                 For tests on one machine only: configure [gateway.tls] anywhere else."
            );
        }
    }
    let server = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(signer)
        .serve_with_incoming_shutdown(incoming, wait_shutdown());
    let server = tokio::spawn(server);

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(target: LOG_TARGET, grpc = %grpc_addr, metrics = %metrics::describe(metrics_addr), "hsmgate signer listening");
    println!(
        "READY grpc={grpc_addr} metrics={}",
        metrics::describe(metrics_addr)
    );

    let mut drain = config.timeouts.drain();
    loop {
        tokio::select! {
            _ = hup.recv() => {
                match Config::load(&config_path) {
                    Ok(new) => {
                        if new.gateway.listen != config.gateway.listen || new.gateway.metrics_listen != config.gateway.metrics_listen {
                            tracing::warn!(target: LOG_TARGET, "listen addresses changed: they apply at the next restart");
                        }
                        if new.gateway.tls != config.gateway.tls || new.gateway.insecure_plaintext.is_some() != config.gateway.insecure_plaintext.is_some() || new.audit != config.audit {
                            tracing::warn!(target: LOG_TARGET, "[gateway.tls], [gateway.insecure_plaintext] and [audit] changes apply at the next restart");
                        }
                        drain = new.timeouts.drain();
                        gateway.reload(&new).await;
                        metrics.reload("applied");
                        tracing::info!(target: LOG_TARGET, config = %config_path.display(), "configuration reloaded");
                    }
                    Err(e) => {
                        metrics.reload("refused");
                        tracing::error!(target: LOG_TARGET, "reload refused, keeping the running configuration: {e}");
                    }
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!(target: LOG_TARGET,
        drain_ms = drain.as_millis() as u64,
        "draining in-flight requests"
    );
    let _ = draining_tx.send(true);
    tokio::time::sleep((drain / 10).min(Duration::from_millis(500))).await;
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(drain, server).await {
        Ok(Ok(Ok(()))) => tracing::info!(target: LOG_TARGET, "drained"),
        Ok(Ok(Err(e))) => tracing::error!(target: LOG_TARGET, "gRPC server: {e}"),
        Ok(Err(e)) => tracing::error!(target: LOG_TARGET, "gRPC server task: {e}"),
        Err(_) => {
            tracing::warn!(target: LOG_TARGET, "drain timed out; stopping with requests in flight")
        }
    }
    gateway.shutdown();
    // After the last call: the audit file loses its preallocated tail.
    audit_handle.close(Duration::from_secs(3)).await;
    Ok(())
}

/// The TLS configuration of the signing API, read from `[gateway.tls]`; `None` for the
/// explicit plain-text opt-in. Errors name the field whose file is unusable.
fn server_tls(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, Error> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let Some(tls) = &config.gateway.tls else {
        return Ok(None);
    };
    let read = |field: &'static str, path: &std::path::Path| {
        let path = config.resolve(path);
        std::fs::read(&path).map_err(|e| Error::Tls {
            field,
            detail: format!("cannot read {}: {e}", path.display()),
        })
    };
    let cert = read("gateway.tls.cert", &tls.cert)?;
    let key = zeroize::Zeroizing::new(read("gateway.tls.key", &tls.key)?);
    let ca = read("gateway.tls.client_ca", &tls.client_ca)?;
    for (field, pem, marker) in [
        (
            "gateway.tls.cert",
            &cert,
            &b"-----BEGIN CERTIFICATE-----"[..],
        ),
        ("gateway.tls.key", &*key, &b"PRIVATE KEY-----"[..]),
        (
            "gateway.tls.client_ca",
            &ca,
            &b"-----BEGIN CERTIFICATE-----"[..],
        ),
    ] {
        if !pem.windows(marker.len()).any(|w| w == marker) {
            return Err(Error::Tls {
                field,
                detail: "not a PEM file of the expected kind".into(),
            });
        }
    }
    Ok(Some(
        ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key.as_slice()))
            .client_ca_root(Certificate::from_pem(ca))
            .timeout(Duration::from_secs(10)),
    ))
}
