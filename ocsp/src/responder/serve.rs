//! The responder process: opening the stores and stacking the sources
//! ([`crate::source`]) the configuration names, one HTTP thread per core on its own
//! `SO_REUSEPORT` listener, the metrics listener, and the shutdown on SIGTERM or SIGINT (stop
//! accepting, drain within `connections.drain_secs`, then stop). The requests themselves are
//! [`super::handler`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hsmgate_signer_api::http_listener::{self, Gate};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use super::handler::{AppState, router};
use crate::config::{self, Config};
use crate::crl::CrlServer;
use crate::error::Error;
use crate::issuers::Issuers;
use crate::metrics::{self, Metrics};
use crate::source::{CachedSource, Health, ReplicatedSource, Source, StoreSource};
use crate::store::{CrlStore, RedisStore, ResponseStore, SqliteStore};

/// Opens the configured store(s) and stacks the sources: cache over SQLite, or cache over
/// Redis with its SQLite replica.
async fn build_source(
    config: &Config,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Source>, Error> {
    let fresh = Duration::from_secs(config.responder.cache_fresh_secs);
    let bytes = config.responder.cache_bytes;
    // SQLite's open is blocking (file creation, schema): keep it off the runtime's workers.
    let open_sqlite = |path: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || SqliteStore::open(path))
            .await
            .map_err(|e| Error::Store {
                store: "sqlite",
                detail: format!("open task failed: {e}"),
            })?
    };
    let source: Arc<dyn Source> = match &config.store {
        config::Store::Sqlite { path } => {
            let store: Arc<dyn ResponseStore> = Arc::new(open_sqlite(config.resolve(path)).await?);
            let inner = StoreSource::new(store, health.clone(), metrics.clone());
            Arc::new(CachedSource::new(inner, bytes, fresh, metrics.clone()))
        }
        config::Store::Redis {
            urls,
            cluster,
            replica,
        } => {
            let replica: Arc<dyn ResponseStore> =
                Arc::new(open_sqlite(config.resolve(replica)).await?);
            let primary: Arc<dyn ResponseStore> = Arc::new(RedisStore::open(urls, *cluster).await?);
            let inner = ReplicatedSource::new(primary, replica, health.clone(), metrics.clone());
            Arc::new(CachedSource::new(inner, bytes, fresh, metrics.clone()))
        }
    };
    Ok(source)
}

/// The CRL side's stores: the same as the responses' (SQLite; Redis with its local replica).
async fn build_crl_server(config: &Config) -> Result<Option<Arc<CrlServer>>, Error> {
    if config.issuers.iter().all(|i| i.crl.is_none()) {
        return Ok(None);
    }
    let open_sqlite = |path: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || SqliteStore::open(path))
            .await
            .map_err(|e| Error::Store {
                store: "sqlite",
                detail: format!("open task failed: {e}"),
            })?
    };
    let (primary, replica): (Arc<dyn CrlStore>, Option<Arc<dyn CrlStore>>) = match &config.store {
        config::Store::Sqlite { path } => {
            (Arc::new(open_sqlite(config.resolve(path)).await?), None)
        }
        config::Store::Redis {
            urls,
            cluster,
            replica,
        } => (
            Arc::new(RedisStore::open(urls, *cluster).await?),
            Some(Arc::new(open_sqlite(config.resolve(replica)).await?)),
        ),
    };
    Ok(CrlServer::from_config(config, primary, replica).map(Arc::new))
}

/// HTTP threads: one per core unless `OCSP_HTTP_THREADS` says otherwise.
fn http_threads() -> usize {
    std::env::var("OCSP_HTTP_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A listener on `addr` with `SO_REUSEPORT`, so that each HTTP thread accepts on its own socket
/// and the kernel spreads connections over them (as nginx's workers do with `reuseport`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Pending connections per listener.
const LISTEN_BACKLOG: u32 = 1024;

/// One HTTP thread: a current-thread tokio runtime serving its own listener until `stop`.
///
/// Why not one multi-threaded runtime: a cache hit is a few microseconds of work, and on two
/// cores the work-stealing scheduler's cross-thread wake-ups cost a fifth of the throughput
/// (bench/ocsp: +22 % requests/s with a runtime per core, as nginx runs a worker per core).
fn http_thread(
    listener: std::net::TcpListener,
    state: Arc<AppState>,
    threads: usize,
    gate: Gate,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        http_listener::serve(listener, router(state, threads), gate, stop).await
    })
}

/// Runs the responder on `config` until SIGTERM or SIGINT. Prints one
/// `READY http=ADDR metrics=ADDR` line on stdout once listening (`metrics=disabled` without a
/// metrics listener), so scripts and tests can use port 0.
pub async fn run(config: Config) -> Result<(), Error> {
    let issuers = Arc::new(Issuers::load(&config)?);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let registry = Arc::new(registry);
    let health = Health::new(metrics.clone());
    let source = build_source(&config, &health, &metrics).await?;
    let crl = build_crl_server(&config).await?;
    let state = Arc::new(AppState {
        issuers,
        source,
        metrics,
        max_request_bytes: config.responder.max_request_bytes,
        crl,
    });

    let threads = http_threads();
    // One connection budget (timeouts, cap) for all the threads' sockets.
    let gate = Gate::new(config.responder.connections);
    let drain = Duration::from_secs(config.responder.connections.drain_secs.saturating_add(1));
    let first = reuseport_listener(config.responder.listen)?;
    let http_addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(reuseport_listener(http_addr)?);
    }
    let metrics_listener = match config.responder.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let metrics_addr: Option<SocketAddr> = match &metrics_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(metrics::serve(l, registry, stopped())));
    let handles = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            // One `AppState` for all: each thread's router holds its reference once, and the
            // handler borrows it per request (no count to bounce between the cores).
            let state = Arc::clone(&state);
            let stop = stopped();
            let gate = gate.clone();
            std::thread::Builder::new()
                .name(format!("ocsp-http-{i}"))
                .spawn(move || http_thread(listener, state, threads, gate, stop))
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let server = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        for handle in handles {
            handle
                .join()
                .map_err(|_| std::io::Error::other("HTTP thread panicked"))??;
        }
        Ok(())
    });

    let describe =
        |a: Option<SocketAddr>| a.map_or_else(|| "disabled".to_owned(), |a| a.to_string());
    tracing::info!(http = %http_addr, metrics = %describe(metrics_addr), "OCSP responder listening");
    println!("READY http={http_addr} metrics={}", describe(metrics_addr));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: draining in-flight requests");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(drain, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::error!("HTTP server: {e}"),
        Ok(Err(e)) => tracing::error!("HTTP server task: {e}"),
        Err(_) => tracing::warn!("drain timed out; stopping with requests in flight"),
    }
    if let Some(task) = metrics_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    Ok(())
}
