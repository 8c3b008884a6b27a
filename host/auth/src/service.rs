//! The identity service: certificates, CA certificates, policies and their attachments, and the
//! broker's [`Authorizer`].
//!
//! Every record lives in the [`AuthStore`]; the whole set is also held in memory (it is small),
//! so CONNECT needs no store round trip and PUBLISH/SUBSCRIBE/Receive checks none at all: at
//! CONNECT the principal's policies are compiled with the connection's variables
//! ([`CompiledPolicies`]) and carried in [`Principal::grants`].
//!
//! Revocation is immediate: deactivating or revoking a certificate, detaching a policy from it,
//! or changing or deleting an attached policy closes every live connection of that certificate
//! through [`Broker::kick_where`] (the connection's writer closes it within milliseconds), and
//! [`Authorizer::still_valid`] closes the window where a CONNECT was authenticated just before.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use shoal_broker::Broker;
use shoal_broker::auth::{Action as BrokerAction, AuthRefusal, Authorizer, ConnectRequest, Principal};
use shoal_broker::message::ClientId;
use shoal_broker::session::KickReason;

use crate::pki::{
    CertInfo, CertificateAuthority, Issued, cert_info, certificate_id, der_to_pem, is_signed_by, pem_to_der,
};
use crate::policy::{
    Action, AltNameKind, AltNames, ArnConfig, CertificateContext, CompiledPolicies, DistinguishedName,
    DnAttribute, Policy, ThingContext, VarContext,
};
use crate::store::{AuthStore, AuthStoreError, AuthTable};
use crate::tls::{ClientAuth, DynamicClientVerifier};

mod keys;

pub use keys::{AccessKeyRecord, HttpCaller, KeyCipher, KeyStatus, is_key_id, write_private};

/// Certificate status, as AWS IoT names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CertStatus {
    /// May connect.
    Active,
    /// Temporarily refused.
    Inactive,
    /// Refused for good.
    Revoked,
    /// Seen from an auto-registering CA, waiting for an operator.
    PendingActivation,
}

impl CertStatus {
    /// Parses `ACTIVE`, `INACTIVE`, `REVOKED`, `PENDING_ACTIVATION`.
    pub fn parse(s: &str) -> Option<CertStatus> {
        Some(match s {
            "ACTIVE" => CertStatus::Active,
            "INACTIVE" => CertStatus::Inactive,
            "REVOKED" => CertStatus::Revoked,
            "PENDING_ACTIVATION" => CertStatus::PendingActivation,
            _ => return None,
        })
    }

    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Active => "ACTIVE",
            CertStatus::Inactive => "INACTIVE",
            CertStatus::Revoked => "REVOKED",
            CertStatus::PendingActivation => "PENDING_ACTIVATION",
        }
    }
}

/// A device certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// Hex SHA-256 of the DER.
    pub id: String,
    /// `arn:aws:iot:{region}:{account}:cert/{id}`.
    pub arn: String,
    /// The certificate (PEM).
    pub pem: String,
    /// Status.
    pub status: CertStatus,
    /// The registered CA that issued it (`None`: Shoal's own CA).
    pub ca_id: Option<String>,
    /// Created (ms since epoch).
    pub created_ms: u64,
    /// Last status change (ms since epoch).
    pub updated_ms: u64,
}

/// A CA certificate registered by an operator ("bring your own CA").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    /// Hex SHA-256 of the DER.
    pub id: String,
    /// `arn:…:cacert/{id}`.
    pub arn: String,
    /// The CA certificate (PEM).
    pub pem: String,
    /// `ACTIVE` or `INACTIVE`.
    pub active: bool,
    /// Certificates it signed are registered on first connect, as PENDING_ACTIVATION.
    pub auto_registration: bool,
    /// Created (ms since epoch).
    pub created_ms: u64,
}

/// One version of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionRecord {
    /// `"1"`, `"2"`, ...
    pub version_id: String,
    /// The JSON document.
    pub document: String,
    /// Created (ms since epoch).
    pub created_ms: u64,
}

/// A policy with its versions (at most 5, as AWS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Name.
    pub name: String,
    /// `arn:…:policy/{name}`.
    pub arn: String,
    /// The version in force.
    pub default_version: String,
    /// Versions, oldest first.
    pub versions: Vec<PolicyVersionRecord>,
    /// The next version number.
    pub next_version: u64,
    /// Created (ms since epoch).
    pub created_ms: u64,
}

impl PolicyRecord {
    /// The default version's document.
    pub fn default_document(&self) -> Option<&str> {
        self.versions
            .iter()
            .find(|v| v.version_id == self.default_version)
            .map(|v| v.document.as_str())
    }
}

/// An identity operation's failure, shaped like AWS's control-plane errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409 (exists, or in use).
    #[error("{0}")]
    Conflict(String),
    /// 400.
    #[error("{0}")]
    Invalid(String),
    /// 410/409-like: limit reached.
    #[error("{0}")]
    LimitExceeded(String),
    /// 503.
    #[error("{0}")]
    Unavailable(String),
    /// 400: a policy document that does not parse (`MalformedPolicyException`).
    #[error("{0}")]
    MalformedPolicy(String),
    /// 409: the resource is still in use (`DeleteConflictException`).
    #[error("{0}")]
    DeleteConflict(String),
    /// 406: the certificate's state forbids the operation (`CertificateStateException`).
    #[error("{0}")]
    CertificateState(String),
    /// 409: a policy already has 5 versions (`VersionsLimitExceededException`).
    #[error("{0}")]
    VersionsLimitExceeded(String),
}

impl IdentityError {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            IdentityError::NotFound(_) => 404,
            IdentityError::Conflict(_) => 409,
            IdentityError::Invalid(_) => 400,
            IdentityError::LimitExceeded(_) => 410,
            IdentityError::Unavailable(_) => 503,
            IdentityError::MalformedPolicy(_) => 400,
            IdentityError::DeleteConflict(_) | IdentityError::VersionsLimitExceeded(_) => 409,
            IdentityError::CertificateState(_) => 406,
        }
    }

    /// The AWS exception name.
    pub fn aws_type(&self) -> &'static str {
        match self {
            IdentityError::NotFound(_) => "ResourceNotFoundException",
            IdentityError::Conflict(_) => "ResourceAlreadyExistsException",
            IdentityError::Invalid(_) => "InvalidRequestException",
            IdentityError::LimitExceeded(_) => "LimitExceededException",
            IdentityError::Unavailable(_) => "ServiceUnavailableException",
            IdentityError::MalformedPolicy(_) => "MalformedPolicyException",
            IdentityError::DeleteConflict(_) => "DeleteConflictException",
            IdentityError::CertificateState(_) => "CertificateStateException",
            IdentityError::VersionsLimitExceeded(_) => "VersionsLimitExceededException",
        }
    }
}

impl From<AuthStoreError> for IdentityError {
    fn from(e: AuthStoreError) -> Self {
        IdentityError::Unavailable(e.to_string())
    }
}

/// What a plain-TCP (no certificate) client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonymousAccess {
    /// Everything (development on loopback).
    AllowAll,
    /// What the named policy allows.
    Policy(String),
    /// Nothing: CONNECT refused.
    Deny,
}

/// The thing registry as the identity service needs it: a thing's type and attributes for the
/// `iot:Connection.Thing.*` policy variables, and whether a thing exists for
/// [`IdentityService::attach_thing_principal`].
#[async_trait]
pub trait ThingLookup: Send + Sync + 'static {
    /// The thing's type and attributes, if it exists. `None` also when the registry cannot be
    /// reached: the connection then has no thing type or attributes, so policy statements that
    /// use them resolve to nothing and deny (fail closed).
    async fn thing(&self, name: &str) -> Option<(Option<String>, BTreeMap<String, String>)>;

    /// Whether the thing exists: AWS IoT refuses to attach a principal to a thing that does not
    /// (`ResourceNotFoundException`). `Err` (typically [`IdentityError::Unavailable`]) when the
    /// registry cannot answer, so an unreachable store is never mistaken for a missing thing.
    async fn exists(&self, name: &str) -> Result<bool, IdentityError>;
}

/// No registry: no thing variables, and every thing name is accepted for attachments.
#[derive(Debug)]
pub struct NoThings;

#[async_trait]
impl ThingLookup for NoThings {
    async fn thing(&self, _name: &str) -> Option<(Option<String>, BTreeMap<String, String>)> {
        None
    }

    async fn exists(&self, _name: &str) -> Result<bool, IdentityError> {
        Ok(true)
    }
}

/// Configuration of the identity service.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// ARN region/account.
    pub arn: ArnConfig,
    /// Plain-listener clients.
    pub anonymous: AnonymousAccess,
    /// Client certificates on the TLS listener.
    pub client_auth: ClientAuth,
    /// Validity of issued device certificates.
    pub cert_validity_days: u32,
    /// Seals access-key secrets in the store.
    pub keys: Arc<KeyCipher>,
}

/// The per-connection authorization state carried in [`Principal::grants`].
#[derive(Debug)]
pub struct Grants {
    /// The certificate id (`None` for anonymous access through a policy).
    pub cert_id: Option<String>,
    /// Names of the policies compiled in.
    pub policies: Vec<String>,
    /// `(policy, default version)` of each policy compiled in, to notice changes made while
    /// the connection was being set up (see `still_valid`).
    pub versions: Vec<(String, String)>,
    /// The compiled policies.
    pub compiled: CompiledPolicies,
    /// The access key of a connection opened with a SigV4 presigned URL (MQTT over WebSocket).
    pub key_id: Option<String>,
    /// The last allowed topic per action (publish, receive): a connection usually publishes to
    /// or receives the same topic over and over, and the compiled policies never change for a
    /// connection (a policy change closes it), so repeating that check is free.
    last_allowed: [parking_lot::Mutex<String>; 2],
}

impl Grants {
    fn new(
        cert_id: Option<String>,
        policies: Vec<String>,
        versions: Vec<(String, String)>,
        compiled: CompiledPolicies,
    ) -> Grants {
        Grants {
            cert_id,
            policies,
            versions,
            compiled,
            key_id: None,
            last_allowed: Default::default(),
        }
    }

    /// Slot of `action` in `last_allowed`.
    fn slot(action: Action) -> Option<usize> {
        match action {
            Action::Publish => Some(0),
            Action::Receive => Some(1),
            _ => None,
        }
    }

    /// Whether `resource` is the last resource allowed for `action` (never blocks: a busy
    /// slot is a miss).
    fn recently_allowed(&self, action: Action, resource: &str) -> bool {
        Grants::slot(action)
            .and_then(|i| self.last_allowed[i].try_lock())
            .is_some_and(|last| !last.is_empty() && *last == resource)
    }

    fn remember_allowed(&self, action: Action, resource: &str) {
        // Reuses the slot's buffer: no allocation per miss once it has grown to the topic size.
        if let Some(mut last) = Grants::slot(action).and_then(|i| self.last_allowed[i].try_lock()) {
            last.clear();
            last.push_str(resource);
        }
    }
}

#[derive(Debug, Default)]
struct Snapshot {
    certs: HashMap<String, CertificateRecord>,
    cas: HashMap<String, CaRecord>,
    policies: HashMap<String, (PolicyRecord, Arc<Policy>)>,
    /// target (principal ARN) -> policy names.
    targets: HashMap<String, BTreeSet<String>>,
    /// principal ARN -> things; thing -> principals.
    principal_things: HashMap<String, BTreeSet<String>>,
    thing_principals: HashMap<String, BTreeSet<String>>,
    /// Access keys by id.
    keys: HashMap<String, keys::KeyEntry>,
}

fn now_ms() -> u64 {
    shoal_broker::message::now_ms()
}

/// The identity service.
pub struct IdentityService {
    store: Arc<dyn AuthStore>,
    ca: Arc<CertificateAuthority>,
    cfg: IdentityConfig,
    state: RwLock<Snapshot>,
    verifier: Arc<DynamicClientVerifier>,
    broker: OnceLock<Weak<Broker>>,
    things: Arc<dyn ThingLookup>,
    /// The shared store's revision of the access keys that `state.keys` reflects
    /// ([`keys::NO_REVISION`] when the store is this node's own).
    key_revision: std::sync::atomic::AtomicU64,
    /// Serializes access-key changes with their rereads (see `keys::sync_access_keys`).
    key_sync: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for IdentityService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityService")
            .field("store", &self.store.kind())
            .finish_non_exhaustive()
    }
}

/// AWS's `iot:ConnectAttributes` of a CONNECT.
fn connect_attributes(req: &ConnectRequest<'_>) -> Vec<String> {
    let mut v = Vec::new();
    if req.persistent {
        v.push(VarContext::PERSISTENT_CONNECT.to_owned());
    }
    if req.has_will {
        v.push(VarContext::LAST_WILL.to_owned());
    }
    v
}

fn split2(key: &str) -> Option<(&str, &str)> {
    key.split_once('\n')
}

impl IdentityService {
    /// Loads every identity record and builds the TLS client verifier.
    pub async fn start(
        store: Arc<dyn AuthStore>,
        ca: Arc<CertificateAuthority>,
        cfg: IdentityConfig,
        things: Arc<dyn ThingLookup>,
    ) -> Result<Arc<IdentityService>, IdentityError> {
        let mut snap = Snapshot::default();
        for (id, v) in store.scan(AuthTable::Certificates).await? {
            match serde_json::from_slice::<CertificateRecord>(&v) {
                Ok(r) => {
                    snap.certs.insert(id, r);
                }
                Err(e) => tracing::warn!(%id, error = %e, "skipping an unreadable certificate record"),
            }
        }
        for (id, v) in store.scan(AuthTable::CaCertificates).await? {
            if let Ok(r) = serde_json::from_slice::<CaRecord>(&v) {
                snap.cas.insert(id, r);
            }
        }
        for (name, v) in store.scan(AuthTable::Policies).await? {
            if let Ok(r) = serde_json::from_slice::<PolicyRecord>(&v)
                && let Some(doc) = r.default_document()
            {
                match Policy::parse(doc) {
                    Ok(p) => {
                        snap.policies.insert(name, (r, Arc::new(p)));
                    }
                    Err(e) => tracing::warn!(policy = %name, error = %e, "stored policy no longer parses"),
                }
            }
        }
        for (k, _) in store.scan(AuthTable::PolicyTargets).await? {
            if let Some((p, t)) = split2(&k) {
                snap.targets.entry(t.to_owned()).or_default().insert(p.to_owned());
            }
        }
        for (k, _) in store.scan(AuthTable::ThingPrincipals).await? {
            if let Some((thing, p)) = split2(&k) {
                snap.principal_things
                    .entry(p.to_owned())
                    .or_default()
                    .insert(thing.to_owned());
                snap.thing_principals
                    .entry(thing.to_owned())
                    .or_default()
                    .insert(p.to_owned());
            }
        }
        // The revision before the records: a change in between is seen as a change later.
        let key_revision = store.revision(AuthTable::AccessKeys).await?;
        snap.keys = Self::load_keys(
            &cfg.keys,
            store.scan(AuthTable::AccessKeys).await?,
            &HashMap::new(),
        );
        let verifier = DynamicClientVerifier::new(&Self::trusted(&ca, &snap), cfg.client_auth)
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        tracing::info!(
            certificates = snap.certs.len(),
            cas = snap.cas.len(),
            policies = snap.policies.len(),
            access_keys = snap.keys.len(),
            "identities loaded"
        );
        let service = Arc::new(IdentityService {
            store,
            ca,
            cfg,
            state: RwLock::new(snap),
            verifier,
            broker: OnceLock::new(),
            things,
            key_revision: std::sync::atomic::AtomicU64::new(key_revision.unwrap_or(keys::NO_REVISION)),
            key_sync: tokio::sync::Mutex::new(()),
        });
        if key_revision.is_some() {
            keys::spawn_key_sync(&service);
        }
        Ok(service)
    }

    /// Gives the service the broker it closes connections on.
    pub fn set_broker(&self, broker: &Arc<Broker>) {
        let _ = self.broker.set(Arc::downgrade(broker));
    }

    /// The TLS client-certificate verifier (trusted CAs follow registrations).
    pub fn verifier(&self) -> Arc<DynamicClientVerifier> {
        self.verifier.clone()
    }

    /// Shoal's own CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// ARN settings.
    pub fn arn(&self) -> &ArnConfig {
        &self.cfg.arn
    }

    fn trusted(ca: &CertificateAuthority, snap: &Snapshot) -> Vec<Vec<u8>> {
        let mut v = vec![ca.cert_der().to_vec()];
        for c in snap.cas.values().filter(|c| c.active) {
            if let Ok(der) = pem_to_der(&c.pem) {
                v.push(der);
            }
        }
        v
    }

    fn refresh_verifier(&self) {
        let cas = Self::trusted(&self.ca, &self.state.read());
        if let Err(e) = self.verifier.set_cas(&cas) {
            tracing::error!(error = %e, "cannot rebuild the TLS client verifier");
        }
    }

    fn cert_arn(&self, id: &str) -> String {
        format!("{}cert/{id}", self.cfg.arn.prefix())
    }

    /// Closes every live connection of certificate `id`.
    fn kick_cert(&self, id: &str, why: &str) {
        let Some(b) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        let n = b.kick_where(|p| &*p.id == id, KickReason::NotAuthorized);
        if n > 0 {
            tracing::info!(certificate = %id, connections = n, "closing connections: {why}");
        }
    }

    /// Closes every live connection whose compiled policies include `policy`.
    fn kick_policy(&self, policy: &str, why: &str) {
        let Some(b) = self.broker.get().and_then(Weak::upgrade) else {
            return;
        };
        let n = b.kick_where(
            |p| {
                p.grants::<Grants>()
                    .is_some_and(|g| g.policies.iter().any(|x| x == policy))
            },
            KickReason::NotAuthorized,
        );
        if n > 0 {
            tracing::info!(%policy, connections = n, "closing connections: {why}");
        }
    }

    // ----- certificates ------------------------------------------------------------------

    async fn save_cert(&self, rec: &CertificateRecord) -> Result<(), IdentityError> {
        let data = serde_json::to_vec(rec).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        self.store.put(AuthTable::Certificates, &rec.id, data).await?;
        self.state.write().certs.insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    /// `CreateKeysAndCertificate`: a key pair and a certificate from Shoal's CA. The private
    /// key is returned once and never stored.
    pub async fn create_keys_and_certificate(
        &self,
        common_name: &str,
        active: bool,
    ) -> Result<(CertificateRecord, Issued), IdentityError> {
        let issued = self
            .ca
            .create_keys_and_certificate(common_name, self.cfg.cert_validity_days)
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let rec = self.new_cert_record(&issued.id, issued.cert_pem.clone(), active, None);
        self.save_cert(&rec).await?;
        Ok((rec, issued))
    }

    /// `CreateCertificateFromCsr`.
    pub async fn sign_csr(&self, csr_pem: &str, active: bool) -> Result<CertificateRecord, IdentityError> {
        let issued = self
            .ca
            .sign_csr(csr_pem, self.cfg.cert_validity_days)
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let rec = self.new_cert_record(&issued.id, issued.cert_pem, active, None);
        self.save_cert(&rec).await?;
        Ok(rec)
    }

    fn new_cert_record(
        &self,
        id: &str,
        pem: String,
        active: bool,
        ca_id: Option<String>,
    ) -> CertificateRecord {
        let now = now_ms();
        CertificateRecord {
            id: id.to_owned(),
            arn: self.cert_arn(id),
            pem,
            status: if active {
                CertStatus::Active
            } else {
                CertStatus::Inactive
            },
            ca_id,
            created_ms: now,
            updated_ms: now,
        }
    }

    /// `RegisterCertificate`: a certificate signed by a registered CA (or by Shoal's).
    pub async fn register_certificate(
        &self,
        pem: &str,
        active: bool,
    ) -> Result<CertificateRecord, IdentityError> {
        let der = pem_to_der(pem).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let id = certificate_id(&der);
        if self.state.read().certs.contains_key(&id) {
            return Err(IdentityError::Conflict(format!(
                "certificate {id} is already registered"
            )));
        }
        let ca_id = if is_signed_by(&der, self.ca.cert_der()) {
            None
        } else {
            let cas: Vec<CaRecord> = self.state.read().cas.values().cloned().collect();
            let ca = cas
                .iter()
                .find(|c| pem_to_der(&c.pem).is_ok_and(|cd| is_signed_by(&der, &cd)))
                .ok_or_else(|| {
                    IdentityError::Invalid(
                        "the certificate is not signed by Shoal's CA or a registered CA".into(),
                    )
                })?;
            Some(ca.id.clone())
        };
        let rec = self.new_cert_record(&id, der_to_pem(&der), active, ca_id);
        self.save_cert(&rec).await?;
        Ok(rec)
    }

    /// `UpdateCertificate`: a status change. Leaving ACTIVE closes its live connections.
    pub async fn set_certificate_status(
        &self,
        id: &str,
        status: CertStatus,
    ) -> Result<CertificateRecord, IdentityError> {
        let mut rec = self.certificate(id)?;
        if rec.status == CertStatus::Revoked && status != CertStatus::Revoked {
            return Err(IdentityError::Invalid(
                "a revoked certificate cannot change status".into(),
            ));
        }
        rec.status = status;
        rec.updated_ms = now_ms();
        self.save_cert(&rec).await?;
        if status != CertStatus::Active {
            self.kick_cert(id, &format!("certificate is now {}", status.as_str()));
        }
        Ok(rec)
    }

    /// `DescribeCertificate`.
    pub fn certificate(&self, id: &str) -> Result<CertificateRecord, IdentityError> {
        self.state
            .read()
            .certs
            .get(id)
            .cloned()
            .ok_or_else(|| IdentityError::NotFound(format!("certificate {id} does not exist")))
    }

    /// `ListCertificates`, ascending by id.
    pub fn certificates(&self) -> Vec<CertificateRecord> {
        let mut v: Vec<_> = self.state.read().certs.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// `DeleteCertificate`: only an INACTIVE or REVOKED one without attachments (as AWS).
    pub async fn delete_certificate(&self, id: &str) -> Result<(), IdentityError> {
        let rec = self.certificate(id)?;
        if rec.status == CertStatus::Active {
            return Err(IdentityError::CertificateState(format!(
                "certificate {id} is ACTIVE: deactivate it before deleting it"
            )));
        }
        {
            let st = self.state.read();
            if st.targets.get(&rec.arn).is_some_and(|p| !p.is_empty())
                || st.principal_things.get(&rec.arn).is_some_and(|t| !t.is_empty())
            {
                return Err(IdentityError::DeleteConflict(format!(
                    "certificate {id} still has policies or things attached"
                )));
            }
        }
        self.store.delete(AuthTable::Certificates, id).await?;
        self.state.write().certs.remove(id);
        Ok(())
    }

    // ----- CA certificates ---------------------------------------------------------------

    /// `RegisterCACertificate` (bring your own CA).
    pub async fn register_ca(
        &self,
        pem: &str,
        active: bool,
        auto_registration: bool,
    ) -> Result<CaRecord, IdentityError> {
        let der = pem_to_der(pem).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let info = cert_info(&der).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        if !info.is_ca {
            return Err(IdentityError::Invalid(
                "not a CA certificate (basicConstraints CA:FALSE)".into(),
            ));
        }
        let rec = CaRecord {
            id: info.id.clone(),
            arn: format!("{}cacert/{}", self.cfg.arn.prefix(), info.id),
            pem: der_to_pem(&der),
            active,
            auto_registration,
            created_ms: now_ms(),
        };
        let data = serde_json::to_vec(&rec).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        if !self
            .store
            .put_new(AuthTable::CaCertificates, &rec.id, data)
            .await?
        {
            return Err(IdentityError::Conflict(format!(
                "CA certificate {} is already registered",
                rec.id
            )));
        }
        self.state.write().cas.insert(rec.id.clone(), rec.clone());
        self.refresh_verifier();
        Ok(rec)
    }

    /// `UpdateCACertificate`: activate or deactivate, toggle auto-registration.
    pub async fn update_ca(
        &self,
        id: &str,
        active: Option<bool>,
        auto: Option<bool>,
    ) -> Result<CaRecord, IdentityError> {
        let mut rec = self
            .state
            .read()
            .cas
            .get(id)
            .cloned()
            .ok_or_else(|| IdentityError::NotFound(format!("CA certificate {id} does not exist")))?;
        if let Some(a) = active {
            rec.active = a;
        }
        if let Some(a) = auto {
            rec.auto_registration = a;
        }
        let data = serde_json::to_vec(&rec).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        self.store.put(AuthTable::CaCertificates, id, data).await?;
        self.state.write().cas.insert(id.to_owned(), rec.clone());
        self.refresh_verifier();
        if !rec.active {
            let ids: Vec<String> = self
                .state
                .read()
                .certs
                .values()
                .filter(|c| c.ca_id.as_deref() == Some(id))
                .map(|c| c.id.clone())
                .collect();
            for cid in ids {
                self.kick_cert(&cid, "its CA was deactivated");
            }
        }
        Ok(rec)
    }

    /// Registered CAs.
    pub fn cas(&self) -> Vec<CaRecord> {
        let mut v: Vec<_> = self.state.read().cas.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    // ----- policies ----------------------------------------------------------------------

    fn validate_policy_name(name: &str) -> Result<(), IdentityError> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(c));
        if ok {
            Ok(())
        } else {
            Err(IdentityError::Invalid(format!(
                "policy name {name:?} must be 1-128 characters of [A-Za-z0-9+=,.@_-]"
            )))
        }
    }

    fn parse_policy(document: &str) -> Result<Policy, IdentityError> {
        Policy::parse(document).map_err(|e| IdentityError::MalformedPolicy(e.to_string()))
    }

    async fn save_policy(
        &self,
        rec: PolicyRecord,
        parsed: Policy,
        new: bool,
    ) -> Result<PolicyRecord, IdentityError> {
        let data = serde_json::to_vec(&rec).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        if new {
            if !self.store.put_new(AuthTable::Policies, &rec.name, data).await? {
                return Err(IdentityError::Conflict(format!(
                    "policy {} already exists",
                    rec.name
                )));
            }
        } else {
            self.store.put(AuthTable::Policies, &rec.name, data).await?;
        }
        self.state
            .write()
            .policies
            .insert(rec.name.clone(), (rec.clone(), Arc::new(parsed)));
        Ok(rec)
    }

    /// `CreatePolicy`: validated (the error names the JSON path), version 1 is the default.
    pub async fn create_policy(&self, name: &str, document: &str) -> Result<PolicyRecord, IdentityError> {
        Self::validate_policy_name(name)?;
        let parsed = Self::parse_policy(document)?;
        let rec = PolicyRecord {
            name: name.to_owned(),
            arn: format!("{}policy/{name}", self.cfg.arn.prefix()),
            default_version: "1".into(),
            versions: vec![PolicyVersionRecord {
                version_id: "1".into(),
                document: document.to_owned(),
                created_ms: now_ms(),
            }],
            next_version: 2,
            created_ms: now_ms(),
        };
        self.save_policy(rec, parsed, true).await
    }

    /// `GetPolicy`.
    pub fn policy(&self, name: &str) -> Result<PolicyRecord, IdentityError> {
        self.state
            .read()
            .policies
            .get(name)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| IdentityError::NotFound(format!("policy {name} does not exist")))
    }

    /// `ListPolicies`.
    pub fn policies(&self) -> Vec<PolicyRecord> {
        let mut v: Vec<_> = self
            .state
            .read()
            .policies
            .values()
            .map(|(r, _)| r.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// `CreatePolicyVersion` (at most 5 versions; `set_as_default` makes it the one in force,
    /// closing the connections that used the old one so they reconnect under the new).
    pub async fn create_policy_version(
        &self,
        name: &str,
        document: &str,
        set_as_default: bool,
    ) -> Result<PolicyRecord, IdentityError> {
        let parsed_new = Self::parse_policy(document)?;
        let mut rec = self.policy(name)?;
        if rec.versions.len() >= 5 {
            return Err(IdentityError::VersionsLimitExceeded(format!(
                "policy {name} already has 5 versions; delete one first"
            )));
        }
        let vid = rec.next_version.to_string();
        rec.next_version += 1;
        rec.versions.push(PolicyVersionRecord {
            version_id: vid.clone(),
            document: document.to_owned(),
            created_ms: now_ms(),
        });
        let parsed = if set_as_default {
            rec.default_version = vid;
            parsed_new
        } else {
            Self::parse_policy(rec.default_document().unwrap_or_default())?
        };
        let rec = self.save_policy(rec, parsed, false).await?;
        if set_as_default {
            self.kick_policy(name, "its policy changed");
        }
        Ok(rec)
    }

    /// `SetDefaultPolicyVersion`.
    pub async fn set_default_policy_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<PolicyRecord, IdentityError> {
        let mut rec = self.policy(name)?;
        let doc = rec
            .versions
            .iter()
            .find(|v| v.version_id == version)
            .map(|v| v.document.clone())
            .ok_or_else(|| IdentityError::NotFound(format!("policy {name} has no version {version}")))?;
        rec.default_version = version.to_owned();
        let parsed = Self::parse_policy(&doc)?;
        let rec = self.save_policy(rec, parsed, false).await?;
        self.kick_policy(name, "its default policy version changed");
        Ok(rec)
    }

    /// `DeletePolicyVersion` (not the default one).
    pub async fn delete_policy_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<PolicyRecord, IdentityError> {
        let mut rec = self.policy(name)?;
        if rec.default_version == version {
            return Err(IdentityError::DeleteConflict(
                "the default version cannot be deleted".into(),
            ));
        }
        let before = rec.versions.len();
        rec.versions.retain(|v| v.version_id != version);
        if rec.versions.len() == before {
            return Err(IdentityError::NotFound(format!(
                "policy {name} has no version {version}"
            )));
        }
        let parsed = Self::parse_policy(rec.default_document().unwrap_or_default())?;
        self.save_policy(rec, parsed, false).await
    }

    /// `DeletePolicy` (only when attached to nothing, as AWS).
    pub async fn delete_policy(&self, name: &str) -> Result<(), IdentityError> {
        self.policy(name)?;
        if self.state.read().targets.values().any(|p| p.contains(name)) {
            return Err(IdentityError::DeleteConflict(format!(
                "policy {name} is still attached"
            )));
        }
        self.store.delete(AuthTable::Policies, name).await?;
        self.state.write().policies.remove(name);
        Ok(())
    }

    /// `AttachPolicy` to a target (a certificate ARN or id).
    pub async fn attach_policy(&self, policy: &str, target: &str) -> Result<(), IdentityError> {
        self.policy(policy)?;
        let target = self.resolve_target(target)?;
        let attached = self.state.read().targets.get(&target).map_or(0, BTreeSet::len);
        if attached >= 10 {
            return Err(IdentityError::LimitExceeded(format!(
                "{target} already has 10 policies"
            )));
        }
        self.store
            .put(
                AuthTable::PolicyTargets,
                &format!("{policy}\n{target}"),
                Vec::new(),
            )
            .await?;
        self.state
            .write()
            .targets
            .entry(target)
            .or_default()
            .insert(policy.to_owned());
        Ok(())
    }

    /// `DetachPolicy`: closes the target's live connections.
    pub async fn detach_policy(&self, policy: &str, target: &str) -> Result<(), IdentityError> {
        let target = self.resolve_target(target)?;
        let removed = self
            .store
            .delete(AuthTable::PolicyTargets, &format!("{policy}\n{target}"))
            .await?;
        if let Some(s) = self.state.write().targets.get_mut(&target) {
            s.remove(policy);
        }
        if removed && let Some(id) = target.rsplit('/').next() {
            self.kick_cert(id, &format!("policy {policy} was detached"));
        }
        Ok(())
    }

    /// Policies attached to a target.
    pub fn attached_policies(&self, target: &str) -> Result<Vec<String>, IdentityError> {
        let target = self.resolve_target(target)?;
        Ok(self.policies_of(&target))
    }

    /// Policies attached to a resolved target ARN.
    fn policies_of(&self, arn: &str) -> Vec<String> {
        self.state
            .read()
            .targets
            .get(arn)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Targets a policy is attached to.
    pub fn policy_targets(&self, policy: &str) -> Vec<String> {
        let mut targets: Vec<String> = self
            .state
            .read()
            .targets
            .iter()
            .filter(|(_, p)| p.contains(policy))
            .map(|(t, _)| t.clone())
            .collect();
        targets.sort();
        targets
    }

    fn resolve_target(&self, target: &str) -> Result<String, IdentityError> {
        let id = target.rsplit('/').next().unwrap_or(target);
        if target.contains(":accesskey/") || is_key_id(target) {
            if !self.state.read().keys.contains_key(id) {
                return Err(IdentityError::NotFound(format!("access key {id} does not exist")));
            }
            return Ok(self.key_arn(id));
        }
        if target.contains(":cert/") || self.state.read().certs.contains_key(id) {
            if !self.state.read().certs.contains_key(id) {
                return Err(IdentityError::NotFound(format!(
                    "certificate {id} does not exist"
                )));
            }
            return Ok(self.cert_arn(id));
        }
        Err(IdentityError::Invalid(format!(
            "target {target:?} must be a certificate or access key (ARN or id)"
        )))
    }

    /// `AttachThingPrincipal`. The thing must exist in the registry (AWS:
    /// `ResourceNotFoundException` otherwise).
    ///
    /// The existence check and the write are not one transaction: a `DeleteThing` racing this
    /// call can leave an attachment to a deleted thing (detach it to clean up).
    pub async fn attach_thing_principal(&self, thing: &str, principal: &str) -> Result<(), IdentityError> {
        let principal = self.resolve_target(principal)?;
        if !self.things.exists(thing).await? {
            return Err(IdentityError::NotFound(format!("Thing {thing} cannot be found.")));
        }
        self.store
            .put(
                AuthTable::ThingPrincipals,
                &format!("{thing}\n{principal}"),
                Vec::new(),
            )
            .await?;
        let mut st = self.state.write();
        st.principal_things
            .entry(principal.clone())
            .or_default()
            .insert(thing.to_owned());
        st.thing_principals
            .entry(thing.to_owned())
            .or_default()
            .insert(principal);
        Ok(())
    }

    /// `DetachThingPrincipal`.
    pub async fn detach_thing_principal(&self, thing: &str, principal: &str) -> Result<(), IdentityError> {
        let principal = self.resolve_target(principal)?;
        self.store
            .delete(AuthTable::ThingPrincipals, &format!("{thing}\n{principal}"))
            .await?;
        let mut st = self.state.write();
        if let Some(s) = st.principal_things.get_mut(&principal) {
            s.remove(thing);
        }
        if let Some(s) = st.thing_principals.get_mut(thing) {
            s.remove(&principal);
        }
        drop(st);
        if let Some(id) = principal.rsplit('/').next() {
            self.kick_cert(id, &format!("thing {thing} was detached"));
        }
        Ok(())
    }

    /// `ListThingPrincipals`.
    pub fn thing_principals(&self, thing: &str) -> Vec<String> {
        self.state
            .read()
            .thing_principals
            .get(thing)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `ListPrincipalThings`.
    pub fn principal_things(&self, principal: &str) -> Result<Vec<String>, IdentityError> {
        let principal = self.resolve_target(principal)?;
        Ok(self
            .state
            .read()
            .principal_things
            .get(&principal)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    // ----- connection-time evaluation ----------------------------------------------------

    fn compile(&self, names: &[String], ctx: &VarContext) -> (CompiledPolicies, Vec<(String, String)>) {
        let st = self.state.read();
        let owned: Vec<(String, String, Arc<Policy>)> = names
            .iter()
            .filter_map(|n| {
                st.policies
                    .get(n)
                    .map(|(r, p)| (n.clone(), r.default_version.clone(), p.clone()))
            })
            .collect();
        drop(st);
        let refs: Vec<(&str, &str, &Policy)> = owned
            .iter()
            .map(|(n, v, p)| (n.as_str(), v.as_str(), &**p))
            .collect();
        let versions = owned.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
        (CompiledPolicies::new(&self.cfg.arn, &refs, ctx), versions)
    }

    async fn cert_context(&self, info: &CertInfo) -> CertificateContext {
        let dn = |m: &BTreeMap<String, String>| {
            let mut d = DistinguishedName::new();
            for attr in DnAttribute::ALL {
                if let Some(v) = m.get(attr.name()) {
                    d.push(attr, v.clone());
                }
            }
            d
        };
        let mut alt = AltNames::new();
        for d in &info.san_dns {
            alt.push(AltNameKind::DnsName, d.clone());
        }
        for ip in &info.san_ip {
            alt.push(AltNameKind::IpAddress, ip.clone());
        }
        let rfc3339 = |s: i64| {
            time::OffsetDateTime::from_unix_timestamp(s)
                .ok()
                .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        };
        CertificateContext {
            subject: dn(&info.subject),
            issuer: dn(&info.issuer),
            subject_alt_names: alt,
            issuer_alt_names: AltNames::new(),
            serial_number: Some(info.serial.to_lowercase()),
            not_before: rfc3339(info.not_before),
            not_after: rfc3339(info.not_after),
        }
    }
}

#[async_trait]
impl Authorizer for IdentityService {
    async fn authenticate(&self, req: &ConnectRequest<'_>) -> Result<Principal, AuthRefusal> {
        if let Some(key) = req.access_key {
            return self.authenticate_key(key, req);
        }
        let client_id = req.client_id.as_str();
        let Some(leaf) = req.peer_certificates.first() else {
            // Plain listener (or optional client auth without a certificate).
            return match &self.cfg.anonymous {
                AnonymousAccess::AllowAll => Ok(Principal::anonymous()),
                AnonymousAccess::Deny => Err(AuthRefusal::NotAuthorized(
                    "this listener requires a client certificate".into(),
                )),
                AnonymousAccess::Policy(name) => {
                    let ctx = VarContext {
                        client_id: Some(client_id.to_owned()),
                        source_ip: req.peer_addr.map(|a| a.ip()),
                        connect_attributes: connect_attributes(req),
                        ..VarContext::default()
                    };
                    let (compiled, versions) = self.compile(std::slice::from_ref(name), &ctx);
                    let d = compiled.check(Action::Connect, client_id);
                    if !d.allowed {
                        return Err(AuthRefusal::NotAuthorized(format!(
                            "anonymous connect as {client_id}: {d}"
                        )));
                    }
                    Ok(Principal {
                        id: Arc::from("anonymous"),
                        attributes: BTreeMap::new(),
                        grants: Some(Arc::new(Grants::new(
                            None,
                            vec![name.clone()],
                            versions,
                            compiled,
                        ))),
                    })
                }
            };
        };
        let info =
            cert_info(leaf).map_err(|e| AuthRefusal::NotAuthorized(format!("client certificate: {e}")))?;
        let id = info.id.clone();
        let rec = self.state.read().certs.get(&id).cloned();
        let rec = match rec {
            Some(r) => r,
            None => {
                // Just-in-time registration from a CA that allows it.
                let issuer_ca = self
                    .state
                    .read()
                    .cas
                    .values()
                    .find(|c| c.active && pem_to_der(&c.pem).is_ok_and(|cd| is_signed_by(leaf, &cd)))
                    .cloned();
                if let Some(ca) = issuer_ca.filter(|c| c.auto_registration) {
                    let mut rec = self.new_cert_record(&id, der_to_pem(leaf), false, Some(ca.id.clone()));
                    rec.status = CertStatus::PendingActivation;
                    if let Err(e) = self.save_cert(&rec).await {
                        tracing::warn!(certificate = %id, error = %e, "cannot auto-register a certificate");
                    } else {
                        tracing::info!(certificate = %id, ca = %ca.id, "certificate auto-registered as PENDING_ACTIVATION");
                    }
                }
                return Err(AuthRefusal::NotAuthorized(format!(
                    "certificate {id} is not registered"
                )));
            }
        };
        if rec.status != CertStatus::Active {
            return Err(AuthRefusal::NotAuthorized(format!(
                "certificate {id} is {}",
                rec.status.as_str()
            )));
        }
        if let Some(ca_id) = &rec.ca_id
            && !self.state.read().cas.get(ca_id).is_some_and(|c| c.active)
        {
            return Err(AuthRefusal::NotAuthorized(format!(
                "the CA {ca_id} of certificate {id} is not active"
            )));
        }
        let arn = self.cert_arn(&id);
        let (policies, attached): (Vec<String>, bool) = {
            let st = self.state.read();
            (
                st.targets
                    .get(&arn)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default(),
                st.principal_things
                    .get(&arn)
                    .is_some_and(|t| t.contains(client_id)),
            )
        };
        let thing = if attached {
            let (type_name, attributes) = self.things.thing(client_id).await.unwrap_or_default();
            Some(ThingContext {
                thing_name: client_id.to_owned(),
                thing_type_name: type_name,
                attributes,
            })
        } else {
            None
        };
        let ctx = VarContext {
            client_id: Some(client_id.to_owned()),
            source_ip: req.peer_addr.map(|a| a.ip()),
            thing,
            certificate: Some(self.cert_context(&info).await),
            connect_attributes: connect_attributes(req),
        };
        let (compiled, versions) = self.compile(&policies, &ctx);
        let d = compiled.check(Action::Connect, client_id);
        if !d.allowed {
            let msg = format!("certificate {id} may not connect as client {client_id}: {d}");
            tracing::info!("{msg}");
            return Err(AuthRefusal::NotAuthorized(msg));
        }
        let mut attributes = BTreeMap::new();
        attributes.insert("certificateId".to_owned(), id.clone());
        if let Some(cn) = info.subject.get("CommonName") {
            attributes.insert("commonName".to_owned(), cn.clone());
        }
        // A thing-bound connection (the certificate is attached to the thing its client id
        // names, AWS's `iot:Connection.Thing.ThingName`): the rules engine hands the thing to
        // plugins.
        if let Some(thing) = &ctx.thing {
            attributes.insert("thingName".to_owned(), thing.thing_name.clone());
        }
        Ok(Principal {
            id: Arc::from(id.as_str()),
            attributes,
            grants: Some(Arc::new(Grants::new(Some(id), policies, versions, compiled))),
        })
    }

    fn authorize(&self, principal: &Principal, client_id: &ClientId, action: BrokerAction<'_>) -> bool {
        let Some(g) = principal.grants::<Grants>() else {
            // No compiled policies: anonymous AllowAll.
            return true;
        };
        let (act, res, retain) = match action {
            BrokerAction::Publish { topic, retain } => (Action::Publish, topic.as_str(), retain),
            BrokerAction::Subscribe { filter } => (Action::Subscribe, filter.as_str(), false),
            BrokerAction::Receive { topic } => (Action::Receive, topic.as_str(), false),
        };
        if !retain && g.recently_allowed(act, res) {
            return true;
        }
        let d = g.compiled.check(act, res);
        if d.allowed && !retain {
            g.remember_allowed(act, res);
        }
        if !d.allowed {
            // A denied delivery is routine (a wide subscription over a narrower Receive
            // grant) and can happen per message: debug level, and counted by the broker.
            if act == Action::Receive {
                tracing::debug!(
                    client_id = %client_id,
                    certificate = g.cert_id.as_deref().unwrap_or("-"),
                    "iot:{} {res}: {d}",
                    act.name()
                );
            } else {
                tracing::info!(
                    client_id = %client_id,
                    certificate = g.cert_id.as_deref().unwrap_or("-"),
                    "iot:{} {res}: {d}",
                    act.name()
                );
            }
            return false;
        }
        if retain {
            let d = g.compiled.check(Action::RetainPublish, res);
            if !d.allowed {
                tracing::info!(client_id = %client_id, certificate = g.cert_id.as_deref().unwrap_or("-"), "iot:RetainPublish {res}: {d}");
                return false;
            }
        }
        true
    }

    /// Re-checked once the connection is registered (so that a change racing the CONNECT
    /// cannot be missed by both the CONNECT and the change's kick): the certificate is still
    /// ACTIVE, its attached policies are still the ones compiled in, and each is still at the
    /// default version compiled in.
    fn still_valid(&self, principal: &Principal) -> bool {
        let Some(g) = principal.grants::<Grants>() else {
            return true;
        };
        let st = self.state.read();
        if let Some(id) = g.key_id.as_deref() {
            let Some(k) = st.keys.get(id) else {
                return false;
            };
            if k.record.status != KeyStatus::Active {
                return false;
            }
            if !k.record.admin {
                let attached: Vec<&String> = st
                    .targets
                    .get(&self.key_arn(id))
                    .map(|s| s.iter().collect())
                    .unwrap_or_default();
                if attached != g.policies.iter().collect::<Vec<_>>() {
                    return false;
                }
            }
        }
        if let Some(id) = g.cert_id.as_deref() {
            if !st.certs.get(id).is_some_and(|c| c.status == CertStatus::Active) {
                return false;
            }
            let attached: Vec<&String> = st
                .targets
                .get(&self.cert_arn(id))
                .map(|s| s.iter().collect())
                .unwrap_or_default();
            let compiled: Vec<&String> = g.policies.iter().collect();
            if attached != compiled {
                return false;
            }
        }
        g.versions.iter().all(|(name, version)| {
            st.policies
                .get(name)
                .is_some_and(|(r, _)| &r.default_version == version)
        })
    }
}
