//! `ca-frontend`: the ACME server, the ceremony that makes its CA certificates, the operator's
//! incident command (mark certificates for early renewal through ARI), and a remote validation
//! perspective (BR §3.2.2.9) the server asks over mTLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use ca_frontend::config::Config;
use ca_frontend::router;
use clap::{Parser, Subcommand};
use hsmgate_signer_api::client::{ClientTls, connect_lazy};
use hsmgate_signer_api::http_listener::{self, Gate};

#[derive(Parser, Debug)]
#[command(version, about = "hsmgate ACME frontend (RFC 8555 + ARI)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serves ACME until SIGTERM/SIGINT; prints `READY http=ADDR`.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Makes the root and intermediate certificates through the gateway (keys stay in the HSMs).
    /// mTLS files from HSMGATE_TLS_CA/CERT/KEY (the `ceremony` identity).
    Ceremony {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        root_key: String,
        #[arg(long, default_value = "CN=hsmgate dev root,O=hsmgate")]
        root_subject: String,
        #[arg(long)]
        intermediate_key: String,
        #[arg(long, default_value = "CN=hsmgate dev intermediate,O=hsmgate")]
        intermediate_subject: String,
        /// Root lifetime; the intermediate gets half.
        #[arg(long, default_value_t = 3650)]
        days: u64,
        #[arg(long)]
        root_out: PathBuf,
        #[arg(long)]
        intermediate_out: PathBuf,
    },
    /// A remote validation perspective: runs challenge and CAA checks from its own network and
    /// resolver for the frontends that ask over mTLS; prints `READY https=ADDR`.
    Perspective {
        #[arg(long)]
        config: PathBuf,
        /// Overrides `perspective.name` (one file for several perspectives).
        #[arg(long)]
        name: Option<String>,
        /// Overrides `perspective.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides `validation.dns_server`: the perspective's own resolver.
        #[arg(long)]
        dns_server: Option<SocketAddr>,
    },
    /// Incident response: ARI tells the holders of these certificates to renew now.
    /// FILE has one serial (hex) per line.
    MarkRenewal {
        #[arg(long)]
        config: PathBuf,
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    hsmgate_signer_api::logging::init("info");
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => serve(config).await,
            Command::Perspective {
                config,
                name,
                listen,
                dns_server,
            } => perspective(config, name, listen, dns_server).await,
            Command::Ceremony {
                gateway,
                root_key,
                root_subject,
                intermediate_key,
                intermediate_subject,
                days,
                root_out,
                intermediate_out,
            } => {
                let channel = connect_lazy(&gateway, ClientTls::from_env().as_ref())?;
                let (root, intermediate) = ca_frontend::ceremony::make_hierarchy(
                    channel,
                    &root_key,
                    &root_subject,
                    &intermediate_key,
                    &intermediate_subject,
                    days,
                )
                .await?;
                std::fs::write(&root_out, root)
                    .with_context(|| format!("writing {}", root_out.display()))?;
                std::fs::write(&intermediate_out, intermediate)
                    .with_context(|| format!("writing {}", intermediate_out.display()))?;
                println!(
                    "root {} intermediate {}",
                    root_out.display(),
                    intermediate_out.display()
                );
                Ok(())
            }
            Command::MarkRenewal { config, file } => {
                let config = Config::load(&config)?;
                let db = ca_frontend::db::open(&config).await?;
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let serials: Vec<String> = text
                    .lines()
                    .map(|l| l.trim().replace(':', "").to_ascii_lowercase())
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect();
                let marked = db.mark_renew_now(&serials).await?;
                println!(
                    "marked {marked} of {} certificates for renewal now",
                    serials.len()
                );
                if marked < serials.len() {
                    bail!(
                        "{} serials are not certificates of this CA",
                        serials.len() - marked
                    );
                }
                Ok(())
            }
        }
    })
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let ca = ca_frontend::Ca::build(config.clone()).await?;
    // OCSP statuses a crash left recorded but unpublished: at start-up, then every 30 s.
    tokio::spawn(ca_frontend::republish::run(ca.clone()));
    if let Some(addr) = config.metrics_listen() {
        serve_metrics(addr, ca.registry.clone()).await?;
    }
    let app = router(ca);
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    };
    let gate = Gate::new(config.server.connections);
    match &config.server.tls {
        None => {
            println!("READY http={addr}");
            tracing::info!(%addr, base = %config.server.base_url, "ACME frontend listening (plain HTTP, loopback)");
            http_listener::serve(listener, app, gate, shutdown).await?;
        }
        Some(tls) => {
            let acceptor = tls_acceptor(&config.resolve(&tls.cert), &config.resolve(&tls.key))?;
            println!("READY https={addr}");
            tracing::info!(%addr, base = %config.server.base_url, "ACME frontend listening (HTTPS)");
            // The TLS handshake runs within the header-read timeout.
            http_listener::serve_with(listener, app, gate, shutdown, move |tcp| {
                let acceptor = acceptor.clone();
                async move { acceptor.accept(tcp).await }
            })
            .await?;
        }
    }
    Ok(())
}

async fn perspective(
    path: PathBuf,
    name: Option<String>,
    listen: Option<SocketAddr>,
    dns_server: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let mut config = ca_frontend::perspective::PerspectiveConfig::load(&path)?;
    if let Some(name) = name {
        config.perspective.name = name;
    }
    if let Some(listen) = listen {
        config.perspective.listen = listen;
    }
    if dns_server.is_some() {
        config.validation.dns_server = dns_server;
    }
    let listener = tokio::net::TcpListener::bind(config.perspective.listen)
        .await
        .with_context(|| format!("binding {}", config.perspective.listen))?;
    let addr = listener.local_addr()?;
    println!("READY https={addr}");
    tracing::info!(%addr, name = %config.perspective.name, region = %config.perspective.region, "validation perspective listening (mTLS)");
    ca_frontend::perspective::serve(&config, listener, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

/// `/metrics` (OpenMetrics text) of `registry` on `addr`, in the background (the same server
/// as the OCSP processes': `ocsp::metrics::serve`).
async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<prometheus_client::registry::Registry>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    tokio::spawn(async move {
        if let Err(e) = ocsp::metrics::serve(listener, registry, std::future::pending()).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
