//! The CA side (Boulder's RA and CA, without HTTP): the state every request shares ([`Ca`]),
//! and what requests do to it — orders and their authorizations ([`order`], [`authz`]),
//! finalization and issuance ([`finalize`]), revocation ([`revoke`]), the repair of what a crash
//! left unpublished ([`republish`]), rate limits ([`ratelimit`]) and renewal information
//! ([`ari`]). Certificates are signed through the gateway by [`signer::IssuingKey`].
//!
//! Nothing here knows HTTP: functions take what a request asked for and return records, or a
//! [`Problem`] for the web front end ([`crate::wfe`]) to answer with.

use std::sync::Arc;

use ocsp::IssuerName;

use crate::challenge::Validator;
use crate::challenge::perspective::Corroborator;
use crate::config::Config;
use crate::db::Db;
use crate::issuance::{self, IssuerCert};
use crate::metrics::{AcmeMetrics, InstrumentedDb};
use crate::model::{
    Account, Authorization, ChallengeType, Order, OrderStatus, order_status_from_authzs,
};
use crate::nonce::NonceService;
use crate::{Error, Problem, unix_now};

pub(crate) mod ari;
pub(crate) mod authz;
pub(crate) mod finalize;
pub(crate) mod order;
pub(crate) mod ratelimit;
pub(crate) mod republish;
pub(crate) mod revoke;
pub(crate) mod signer;

use signer::IssuingKey;

type Result<T> = std::result::Result<T, Error>;

/// The CA's state: everything a request needs. Shared by the handlers as `Arc<Ca>`.
#[derive(Debug)]
pub struct Ca {
    pub config: Config,
    /// Accounts, orders, authorizations, certificates (instrumented: every call is counted).
    pub db: Arc<dyn Db>,
    /// The `Replay-Nonce`s issued and not yet used.
    pub nonces: NonceService,
    /// This frontend's own challenge and CAA checks (the primary perspective).
    pub validator: Validator,
    /// The remote perspectives validation and CAA are corroborated from (BR §3.2.2.9).
    pub corroborator: Corroborator,
    /// The issuing key in the HSMs behind the gateway.
    pub signer: IssuingKey,
    /// The certificate of the issuing key: the issuer of every leaf, and its chain.
    pub intermediate: IssuerCert,
    /// Signs and stores each certificate's OCSP response before the subscriber hears of it.
    pub presigner: ocsp::presigner::Presigner,
    /// `ocsp.issuer`: the pre-signer's name for the intermediate.
    pub ocsp_issuer: IssuerName,
    /// The issuer's CRL shards (`[issuers.crl]` of the OCSP config), for the CRL Distribution
    /// Point of certificates whose profile publishes CRLs.
    pub crl_shards: Option<ocsp::crl::ShardMap>,
    /// Requests, orders, issuance, validations, limits, database and gateway calls.
    pub metrics: Arc<AcmeMetrics>,
    /// `metrics` and the perspectives' counters, served at `server.metrics_listen`.
    pub registry: Arc<prometheus_client::registry::Registry>,
}

impl Ca {
    /// Everything `config` names, checked: the root and intermediate certificates (the
    /// intermediate must chain to the root, and its key must be the gateway's issuing key), the
    /// database (migrated), the gateway (retried for 30 s while it starts), the OCSP pre-signer.
    pub async fn build(config: Config) -> Result<Arc<Self>> {
        use der::{Decode, Encode};
        let read = |p: &std::path::Path| {
            let p = config.resolve(p);
            std::fs::read_to_string(&p).map_err(|e| Error::Config {
                path: p.display().to_string(),
                detail: e.to_string(),
            })
        };
        let root = IssuerCert::from_pem(&read(&config.ca.root)?)?;
        let intermediate = IssuerCert::from_pem(&read(&config.ca.intermediate)?)?;
        // A mismatched pair would issue chains that verify nowhere.
        let cert = x509_cert::Certificate::from_der(&intermediate.der)?;
        let tbs = cert.tbs_certificate().to_der()?;
        let signature = cert.signature().as_bytes().unwrap_or_default();
        issuance::verify_signature(&root.spki, cert.signature_algorithm(), &tbs, signature)
            .map_err(|e| Error::Config {
                path: config.ca.intermediate.display().to_string(),
                detail: format!(
                    "not signed by the root in {}: {e}",
                    config.ca.root.display()
                ),
            })?;
        let metrics = Arc::new(AcmeMetrics::default());
        let mut registry = prometheus_client::registry::Registry::with_prefix("hsmgate_acme");
        metrics.register(&mut registry);
        let db = InstrumentedDb::wrap(crate::db::open(&config).await?, metrics.clone());
        let gateway = signer::connect(
            &config.gateway.url,
            config.gateway_tls().as_ref(),
            config.gateway.batch,
            std::time::Duration::from_millis(config.gateway.timeout_ms),
        )?;
        // Retried for 30 s while the gateway starts (a dev stack starts both at once).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        let (signer, gateway_spki) = loop {
            match IssuingKey::start(&gateway, &config.gateway.issuing_key).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "gateway not ready");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        };
        if gateway_spki != intermediate.spki {
            return Err(Error::Config {
                path: "gateway.issuing_key".into(),
                detail: format!(
                    "gateway key `{}` is not the key of the intermediate certificate {}",
                    config.gateway.issuing_key,
                    config.ca.intermediate.display()
                ),
            });
        }
        let ocsp_path = config.resolve(&config.ocsp.config);
        let ocsp_config = ocsp::config::Config::load(&ocsp_path)?;
        if !ocsp_config
            .issuers
            .iter()
            .any(|i| i.name == config.ocsp.issuer)
        {
            return Err(Error::Config {
                path: "ocsp.issuer".into(),
                detail: format!(
                    "`{}` is not an issuer of {}",
                    config.ocsp.issuer,
                    ocsp_path.display()
                ),
            });
        }
        let crl_shards = ocsp::crl::ShardMap::all(&ocsp_config)
            .into_iter()
            .find(|m| m.issuer().0 == config.ocsp.issuer);
        if crl_shards.is_none()
            && let Some(i) = config.ca.profiles.iter().position(|p| p.status.crl())
        {
            return Err(Error::Config {
                path: format!("ca.profiles[{i}].status"),
                detail: format!(
                    "profile `{}` publishes CRLs, but issuer `{}` of {} has no [issuers.crl]",
                    config.ca.profiles[i].name,
                    config.ocsp.issuer,
                    ocsp_path.display()
                ),
            });
        }
        let presigner = ocsp::presigner::Presigner::from_config(
            &ocsp_config,
            ocsp::presigner::PresignerMetrics::default(),
        )
        .await?;
        let validator = Validator::new(
            &config.validation,
            &config.ca.caa_identities,
            &config.ca.allowed_special_tlds,
        )?;
        // A perspective's answer may take its whole validation timeout; a little more for the
        // connection.
        let corroborator = Corroborator::new(
            &config.validation.perspectives,
            |p| config.resolve(p),
            std::time::Duration::from_millis(config.validation.timeout_ms + 2_000),
            &mut registry,
        )?;
        Ok(Arc::new(Ca {
            nonces: NonceService::new(config.server.nonce_capacity),
            db,
            validator,
            corroborator,
            signer,
            intermediate,
            presigner,
            ocsp_issuer: IssuerName(config.ocsp.issuer.clone()),
            crl_shards,
            config,
            metrics,
            registry: Arc::new(registry),
        }))
    }

    /// `path` under `server.base_url`: the URL a client is given for a resource.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.server.base_url)
    }

    pub(crate) fn account_url(&self, id: &str) -> String {
        self.url(&format!("/acme/acct/{id}"))
    }

    pub(crate) fn order_url(&self, id: &str) -> String {
        self.url(&format!("/acme/order/{id}"))
    }

    pub(crate) fn authz_url(&self, id: &str) -> String {
        self.url(&format!("/acme/authz/{id}"))
    }

    pub(crate) fn challenge_url(&self, authz: &str, kind: ChallengeType) -> String {
        self.url(&format!("/acme/chall/{authz}/{}", kind.as_str()))
    }

    pub(crate) fn cert_url(&self, serial: &str) -> String {
        self.url(&format!("/acme/cert/{serial}"))
    }
}

/// Loads an order owned by `account`, with its status as its authorizations make it now.
pub(crate) async fn owned_order(
    ca: &Ca,
    id: &str,
    account: &Account,
) -> Result<(Order, Vec<Authorization>, OrderStatus)> {
    let order = ca
        .db
        .order(id)
        .await?
        .ok_or_else(|| Problem::not_found("order"))?;
    if order.account_id != account.id {
        return Err(Problem::unauthorized("the order belongs to another account").into());
    }
    let mut authzs = Vec::with_capacity(order.authz_ids.len());
    for a in &order.authz_ids {
        authzs.push(ca.db.authz(a).await?.ok_or_else(|| {
            Error::Internal(format!("order {id} names a missing authorization {a}"))
        })?);
    }
    let status = order_status_from_authzs(&order, &authzs, unix_now());
    Ok((order, authzs, status))
}

/// Loads an authorization owned by `account`.
pub(crate) async fn owned_authz(ca: &Ca, id: &str, account: &Account) -> Result<Authorization> {
    let authz = ca
        .db
        .authz(id)
        .await?
        .ok_or_else(|| Problem::not_found("authorization"))?;
    if authz.account_id != account.id {
        return Err(Problem::unauthorized("the authorization belongs to another account").into());
    }
    Ok(authz)
}
