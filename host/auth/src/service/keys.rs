//! Access keys: the identities that sign HTTP requests (SigV4) and presigned WebSocket URLs.
//!
//! A key is an id (`AKIA` + 16 characters, AWS's shape) and a 40-character secret. SigV4 needs
//! the secret itself to recompute a signature, so it cannot be stored as a hash: it is sealed
//! with AES-256-GCM under the node's key-encryption key ([`KeyCipher`], a 32-byte file that
//! never enters the store) and opened once at start. Nodes sharing a Redis must share that file.
//!
//! Two kinds of key:
//! - **admin** keys may call everything, the management API included (the first one is
//!   created at start when the store has none, and written to `DATA/credentials`);
//! - **device** keys may call only the data plane (shadows, publish, retained messages), and
//!   only what the policies attached to them allow, exactly as for a certificate.
//!
//! Keys are held in memory, so checking a request's key costs no store round trip. On a store
//! several nodes share (Redis), a background task compares the store's revision of the keys
//! table with the one in memory every [`KEY_SYNC_INTERVAL`] and rereads the keys only when it
//! moved (as the rules engine does with its rules): a key created, deactivated or deleted on
//! one node is honoured or refused by the others within that interval, and the live
//! connections of a key that stopped being active are closed there too. A change made here
//! first catches up with the store, so it never writes back a stale record.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{IdentityError, IdentityService, now_ms};
use crate::policy::{Action, CompiledPolicies, VarContext};
use crate::sigv4::SigV4Error;
use crate::store::AuthTable;

/// Seals and opens secrets with the key-encryption key.
pub struct KeyCipher {
    key: LessSafeKey,
}

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCipher(..)")
    }
}

impl KeyCipher {
    /// A cipher over 32 raw key bytes.
    pub fn new(bytes: &[u8; 32]) -> KeyCipher {
        // AES-256 accepts any 32 bytes, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!());
        KeyCipher {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Reads the key-encryption key at `path` (32 bytes as 64 hex characters), creating it
    /// (mode 0600) if it does not exist.
    pub fn load_or_create(path: &Path) -> Result<KeyCipher, IdentityError> {
        let io =
            |e: std::io::Error| IdentityError::Invalid(format!("key-encryption key {}: {e}", path.display()));
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let t = text.trim();
                let bytes: Option<Vec<u8>> = (t.len() == 64 && t.is_ascii())
                    .then(|| {
                        (0..32)
                            .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16).ok())
                            .collect()
                    })
                    .flatten();
                let bytes: [u8; 32] = bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
                    IdentityError::Invalid(format!(
                        "key-encryption key {}: expected 64 hexadecimal characters",
                        path.display()
                    ))
                })?;
                Ok(KeyCipher::new(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                fill(&mut bytes)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, &crate::sigv4::hex(&bytes)).map_err(io)?;
                tracing::info!(path = %path.display(), "created the key-encryption key of access-key secrets");
                Ok(KeyCipher::new(&bytes))
            }
            Err(e) => Err(io(e)),
        }
    }

    fn seal(&self, secret: &str) -> Result<String, IdentityError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill(&mut nonce)?;
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| IdentityError::Invalid("cannot seal a secret".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(B64.encode(out))
    }

    fn open(&self, sealed: &str) -> Option<String> {
        let raw = B64.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = rest.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::empty(), &mut data).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

fn fill(buf: &mut [u8]) -> Result<(), IdentityError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| IdentityError::Invalid("the system random source failed".into()))
}

/// Writes `text` to a new file readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// A stored access key (the secret sealed).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyRecord {
    /// `AKIA...`.
    pub access_key_id: String,
    /// base64(nonce ‖ AES-256-GCM(secret)).
    pub sealed_secret: String,
    /// `Active` or `Inactive`.
    pub status: KeyStatus,
    /// May call the management API.
    pub admin: bool,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Creation time (ms since the epoch).
    pub created_ms: u64,
}

impl AccessKeyRecord {
    /// The record as the API shows it (never the secret).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "accessKeyId": self.access_key_id,
            "status": self.status,
            "admin": self.admin,
            "description": self.description,
            "createDate": self.created_ms as f64 / 1000.0,
        })
    }
}

/// IAM's key statuses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum KeyStatus {
    /// Signs requests.
    Active,
    /// Refused, kept.
    Inactive,
}

/// An access key and its opened secret, as the service keeps it in memory.
#[derive(Debug, Clone)]
pub(super) struct KeyEntry {
    pub record: AccessKeyRecord,
    /// `None` when the secret could not be opened with this node's key-encryption key.
    pub secret: Option<Arc<str>>,
}

/// The caller of an HTTP request, once its signature (or TLS client certificate) verified.
#[derive(Debug)]
pub struct HttpCaller {
    /// The access key id, or the certificate id.
    pub id: String,
    /// `"access key"` or `"certificate"`.
    pub kind: &'static str,
    /// May call the management API and everything else.
    pub admin: bool,
    /// The compiled policies of a device key.
    compiled: Option<CompiledPolicies>,
}

impl HttpCaller {
    /// The caller when HTTP authentication is off (`--http-auth none`): may do everything.
    pub fn unauthenticated() -> HttpCaller {
        HttpCaller {
            id: "unauthenticated".into(),
            kind: "caller",
            admin: true,
            compiled: None,
        }
    }

    /// Whether the caller may do `action` on the resource named `resource` (as for
    /// [`CompiledPolicies::check`]); admin keys may do everything. A refusal is logged with
    /// the statement that decided.
    pub fn allows(&self, action: Action, resource: &str) -> bool {
        if self.admin {
            return true;
        }
        let Some(c) = &self.compiled else {
            return false;
        };
        let d = c.check(action, resource);
        if !d.allowed {
            tracing::info!("{self}: {action} {resource}: {d}");
        }
        d.allowed
    }
}

impl std::fmt::Display for HttpCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind, self.id)
    }
}

const ID_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn new_key_id() -> Result<String, IdentityError> {
    let mut b = [0u8; 16];
    fill(&mut b)?;
    let mut id = String::from("AKIA");
    id.extend(b.iter().map(|x| ID_ALPHABET[(x & 31) as usize] as char));
    Ok(id)
}

fn new_secret() -> Result<String, IdentityError> {
    let mut b = [0u8; 30];
    fill(&mut b)?;
    Ok(B64.encode(b))
}

/// Whether `s` looks like an access key id (`AKIA` and 16 base-32 characters), so policy
/// attachments can tell a key from a certificate.
pub fn is_key_id(s: &str) -> bool {
    s.len() == 20 && s.starts_with("AKIA") && s.bytes().all(|b| ID_ALPHABET.contains(&b))
}

impl IdentityService {
    pub(super) fn key_arn(&self, id: &str) -> String {
        format!("{}accesskey/{id}", self.cfg.arn.prefix())
    }

    /// The keys of `rows`, their secrets opened (or taken from `known` when already opened
    /// there, which also keeps a reread from logging the same failure again).
    pub(super) fn load_keys(
        cipher: &KeyCipher,
        rows: Vec<(String, Vec<u8>)>,
        known: &HashMap<String, KeyEntry>,
    ) -> HashMap<String, KeyEntry> {
        let mut out = HashMap::new();
        for (id, v) in rows {
            let Ok(record) = serde_json::from_slice::<AccessKeyRecord>(&v) else {
                tracing::warn!(%id, "skipping an unreadable access key record");
                continue;
            };
            if let Some(k) = known.get(&id)
                && k.record.sealed_secret == record.sealed_secret
            {
                out.insert(
                    id,
                    KeyEntry {
                        record,
                        secret: k.secret.clone(),
                    },
                );
                continue;
            }
            let secret = cipher.open(&record.sealed_secret).map(Arc::from);
            if secret.is_none() {
                tracing::error!(
                    access_key = %id,
                    "cannot open this access key's secret with this node's key-encryption key: \
                     nodes sharing a store must share the key file (--key-encryption-key-file)"
                );
            }
            out.insert(id, KeyEntry { record, secret });
        }
        out
    }

    /// Creates an access key: returns its record and its secret (shown once, never again).
    pub async fn create_access_key(
        &self,
        description: &str,
        admin: bool,
    ) -> Result<(AccessKeyRecord, String), IdentityError> {
        if description.len() > 256 {
            return Err(IdentityError::Invalid(
                "description: at most 256 characters".into(),
            ));
        }
        let _serial = self.key_sync.lock().await;
        self.sync_keys_locked().await?;
        let secret = new_secret()?;
        let record = AccessKeyRecord {
            access_key_id: new_key_id()?,
            sealed_secret: self.cfg.keys.seal(&secret)?,
            status: KeyStatus::Active,
            admin,
            description: description.to_owned(),
            created_ms: now_ms(),
        };
        self.save_key(&record).await?;
        self.state.write().keys.insert(
            record.access_key_id.clone(),
            KeyEntry {
                record: record.clone(),
                secret: Some(Arc::from(secret.as_str())),
            },
        );
        tracing::info!(access_key = %record.access_key_id, admin, "access key created");
        Ok((record, secret))
    }

    async fn save_key(&self, record: &AccessKeyRecord) -> Result<(), IdentityError> {
        let data = serde_json::to_vec(record).map_err(|e| IdentityError::Invalid(e.to_string()))?;
        self.store
            .put(AuthTable::AccessKeys, &record.access_key_id, data)
            .await?;
        Ok(())
    }

    /// Every access key, by id.
    pub fn access_keys(&self) -> Vec<AccessKeyRecord> {
        let mut v: Vec<AccessKeyRecord> = self
            .state
            .read()
            .keys
            .values()
            .map(|k| k.record.clone())
            .collect();
        v.sort_by(|a, b| a.access_key_id.cmp(&b.access_key_id));
        v
    }

    /// One access key.
    pub fn access_key(&self, id: &str) -> Result<AccessKeyRecord, IdentityError> {
        self.state
            .read()
            .keys
            .get(id)
            .map(|k| k.record.clone())
            .ok_or_else(|| IdentityError::NotFound(format!("access key {id} does not exist")))
    }

    /// Activates or deactivates a key: a deactivated key signs nothing from the next request.
    pub async fn set_access_key_status(
        &self,
        id: &str,
        status: KeyStatus,
    ) -> Result<AccessKeyRecord, IdentityError> {
        let _serial = self.key_sync.lock().await;
        self.sync_keys_locked().await?;
        let mut record = self.access_key(id)?;
        if record.admin && status == KeyStatus::Inactive && self.last_active_admin(id) {
            return Err(IdentityError::Conflict(format!(
                "{id} is the last active admin key; create another before deactivating it"
            )));
        }
        record.status = status;
        self.save_key(&record).await?;
        if let Some(k) = self.state.write().keys.get_mut(id) {
            k.record.status = status;
        }
        if status == KeyStatus::Inactive {
            self.kick_cert(id, "its access key was deactivated");
        }
        Ok(record)
    }

    fn last_active_admin(&self, id: &str) -> bool {
        !self
            .state
            .read()
            .keys
            .values()
            .any(|k| k.record.admin && k.record.status == KeyStatus::Active && k.record.access_key_id != id)
    }

    /// Deletes a key and its policy attachments.
    pub async fn delete_access_key(&self, id: &str) -> Result<(), IdentityError> {
        let _serial = self.key_sync.lock().await;
        self.sync_keys_locked().await?;
        let record = self.access_key(id)?;
        if record.admin && record.status == KeyStatus::Active && self.last_active_admin(id) {
            return Err(IdentityError::Conflict(format!(
                "{id} is the last active admin key; create another before deleting it"
            )));
        }
        let arn = self.key_arn(id);
        for p in self.policies_of(&arn) {
            self.detach_policy(&p, &arn).await?;
        }
        self.store.delete(AuthTable::AccessKeys, id).await?;
        self.state.write().keys.remove(id);
        self.kick_cert(id, "its access key was deleted");
        Ok(())
    }

    /// On a store several nodes share: rereads the access keys if the store's revision of them
    /// moved since they were read (another node, or this one, changed one), and closes the
    /// connections of keys that stopped being active. Returns whether it reread. Cheap when
    /// nothing changed: one revision read. Called every [`KEY_SYNC_INTERVAL`] by a background
    /// task, and before every key change made here.
    pub async fn sync_access_keys(&self) -> Result<bool, IdentityError> {
        if self.key_revision.load(Relaxed) == NO_REVISION {
            return Ok(false);
        }
        let _serial = self.key_sync.lock().await;
        self.sync_keys_locked().await
    }

    /// [`Self::sync_access_keys`] with `key_sync` held.
    async fn sync_keys_locked(&self) -> Result<bool, IdentityError> {
        let seen = self.key_revision.load(Relaxed);
        if seen == NO_REVISION {
            return Ok(false);
        }
        let Some(now) = self.store.revision(AuthTable::AccessKeys).await? else {
            return Ok(false);
        };
        if now == seen {
            return Ok(false);
        }
        // The revision was read before the records, so a change racing this read is caught by
        // the next check.
        let rows = self.store.scan(AuthTable::AccessKeys).await?;
        let known = self.state.read().keys.clone();
        let fresh = Self::load_keys(&self.cfg.keys, rows, &known);
        let active = |k: Option<&KeyEntry>| k.is_some_and(|k| k.record.status == KeyStatus::Active);
        let stopped: Vec<String> = known
            .iter()
            .filter(|(id, k)| active(Some(k)) && !active(fresh.get(*id)))
            .map(|(id, _)| id.clone())
            .collect();
        let changed = fresh.len() != known.len()
            || fresh
                .iter()
                .any(|(id, k)| known.get(id).is_none_or(|o| o.record != k.record));
        self.state.write().keys = fresh;
        self.key_revision.store(now, Relaxed);
        for id in &stopped {
            self.kick_cert(id, "its access key was deactivated or deleted on another node");
        }
        if changed {
            tracing::info!(
                revision = now,
                deactivated_or_deleted = stopped.len(),
                "access keys changed in the shared store; reloaded"
            );
        }
        Ok(true)
    }

    /// At start: when the store has no active admin key, creates one and writes it to
    /// `credentials` as an AWS credentials file (profile `default`, mode 0600) for the CLI,
    /// boto3 and the AWS CLI, replacing a file whose key the store no longer has (a memory
    /// store after a restart). Returns the key id when it created one.
    pub async fn bootstrap_admin_key(&self, credentials: &Path) -> Result<Option<String>, IdentityError> {
        let has_admin = self
            .state
            .read()
            .keys
            .values()
            .any(|k| k.record.admin && k.record.status == KeyStatus::Active);
        if has_admin {
            return Ok(None);
        }
        if credentials.exists() {
            tracing::warn!(
                path = %credentials.display(),
                "the store has no active admin key: replacing the credentials file with a new one"
            );
        }
        let (record, secret) = self.create_access_key("bootstrap admin key", true).await?;
        let text = format!(
            "# Shoal's first admin access key (created at start because the store had none).\n\
             # Use it with: shoal thing list --credentials-file {path} (or SHOAL_CREDENTIALS_FILE), or\n\
             # AWS_SHARED_CREDENTIALS_FILE={path} aws --endpoint-url http://HOST:PORT iot ...\n\
             [default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n",
            path = credentials.display(),
            id = record.access_key_id
        );
        write_private(credentials, &text)
            .map_err(|e| IdentityError::Invalid(format!("writing {}: {e}", credentials.display())))?;
        Ok(Some(record.access_key_id))
    }

    /// The secret of an active key, for verifying a signature.
    pub fn signing_secret(&self, id: &str) -> Result<Arc<str>, SigV4Error> {
        let st = self.state.read();
        match st.keys.get(id) {
            Some(k) if k.record.status == KeyStatus::Active => k.secret.clone().ok_or(SigV4Error::UnknownKey),
            _ => Err(SigV4Error::UnknownKey),
        }
    }

    /// The caller behind a verified key: admin, or the key's attached policies compiled for
    /// this request (`aws:SourceIp` is the peer address).
    pub fn http_caller(
        &self,
        id: &str,
        source_ip: Option<std::net::IpAddr>,
    ) -> Result<HttpCaller, SigV4Error> {
        let admin = {
            let st = self.state.read();
            let k = st.keys.get(id).ok_or(SigV4Error::UnknownKey)?;
            k.record.admin
        };
        if admin {
            return Ok(HttpCaller {
                id: id.to_owned(),
                kind: "access key",
                admin: true,
                compiled: None,
            });
        }
        let policies = self.policies_of(&self.key_arn(id));
        let ctx = VarContext {
            source_ip,
            ..VarContext::default()
        };
        let (compiled, _) = self.compile(&policies, &ctx);
        Ok(HttpCaller {
            id: id.to_owned(),
            kind: "access key",
            admin: false,
            compiled: Some(compiled),
        })
    }
}

/// How often a node on a shared store checks whether the access keys changed.
pub(super) const KEY_SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// `IdentityService::key_revision` when the store is not shared.
pub(super) const NO_REVISION: u64 = u64::MAX;

/// Starts the task that keeps a shared store's access keys in sync (see the module doc); it
/// ends with the service.
pub(super) fn spawn_key_sync(service: &Arc<IdentityService>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::error!(
            "no async runtime: access keys changed by other nodes sharing the store will not be seen"
        );
        return;
    };
    let weak = Arc::downgrade(service);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(KEY_SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let Some(service) = weak.upgrade() else {
                return;
            };
            match service.sync_access_keys().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("access keys: the shared store answers again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "access keys: cannot check the shared store for changes");
                }
                Err(_) => {}
            }
        }
    });
}

/// What an admin key may do over MQTT: everything.
fn allow_all() -> &'static crate::policy::Policy {
    static P: std::sync::OnceLock<crate::policy::Policy> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        crate::policy::Policy::parse(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:*","Resource":"*"}]}"#,
        )
        .unwrap_or_else(|e| unreachable!("the allow-all policy parses: {e}"))
    })
}

impl IdentityService {
    /// A CONNECT over a WebSocket opened with a SigV4 presigned URL: the key must be active;
    /// an admin key may do everything, another key what its attached policies allow (compiled
    /// with the connection's variables, `iot:Connect` checked here).
    pub(super) fn authenticate_key(
        &self,
        id: &str,
        req: &shoal_broker::auth::ConnectRequest<'_>,
    ) -> Result<shoal_broker::auth::Principal, shoal_broker::auth::AuthRefusal> {
        use shoal_broker::auth::AuthRefusal;
        let client_id = req.client_id.as_str();
        let admin = {
            let st = self.state.read();
            match st.keys.get(id) {
                Some(k) if k.record.status == KeyStatus::Active => k.record.admin,
                _ => {
                    return Err(AuthRefusal::NotAuthorized(format!(
                        "access key {id} does not exist or is not active"
                    )));
                }
            }
        };
        let ctx = VarContext {
            client_id: Some(client_id.to_owned()),
            source_ip: req.peer_addr.map(|a| a.ip()),
            connect_attributes: super::connect_attributes(req),
            ..VarContext::default()
        };
        let (policies, compiled, versions) = if admin {
            let c = CompiledPolicies::new(&self.cfg.arn, &[("admin-access-key", "1", allow_all())], &ctx);
            (Vec::new(), c, Vec::new())
        } else {
            let policies = self.policies_of(&self.key_arn(id));
            let (c, v) = self.compile(&policies, &ctx);
            (policies, c, v)
        };
        let d = compiled.check(Action::Connect, client_id);
        if !d.allowed {
            let msg = format!("access key {id} may not connect as client {client_id}: {d}");
            tracing::info!("{msg}");
            return Err(AuthRefusal::NotAuthorized(msg));
        }
        let mut grants = super::Grants::new(None, policies, versions, compiled);
        grants.key_id = Some(id.to_owned());
        let mut attributes = std::collections::BTreeMap::new();
        attributes.insert("accessKeyId".to_owned(), id.to_owned());
        Ok(shoal_broker::auth::Principal {
            id: Arc::from(id),
            attributes,
            grants: Some(Arc::new(grants)),
        })
    }

    /// The caller behind a TLS client certificate on the HTTPS listener (the chain already
    /// verified by the handshake): the certificate must be registered and ACTIVE, its CA (if
    /// registered) active; its attached policies are compiled with the certificate's policy
    /// variables and `aws:SourceIp`. A certificate never has admin rights (AWS: mutual TLS
    /// reaches the data plane only).
    pub async fn http_caller_for_certificate(
        &self,
        leaf: &[u8],
        source_ip: Option<std::net::IpAddr>,
    ) -> Result<HttpCaller, String> {
        let info = crate::pki::cert_info(leaf).map_err(|e| format!("client certificate: {e}"))?;
        let rec = self
            .state
            .read()
            .certs
            .get(&info.id)
            .cloned()
            .ok_or_else(|| format!("certificate {} is not registered", info.id))?;
        if rec.status != super::CertStatus::Active {
            return Err(format!("certificate {} is {}", info.id, rec.status.as_str()));
        }
        if let Some(ca_id) = &rec.ca_id
            && !self.state.read().cas.get(ca_id).is_some_and(|c| c.active)
        {
            return Err(format!("the CA {ca_id} of certificate {} is not active", info.id));
        }
        let policies = self.policies_of(&self.cert_arn(&info.id));
        let ctx = VarContext {
            source_ip,
            certificate: Some(self.cert_context(&info).await),
            ..VarContext::default()
        };
        let (compiled, _) = self.compile(&policies, &ctx);
        Ok(HttpCaller {
            id: info.id,
            kind: "certificate",
            admin: false,
            compiled: Some(compiled),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let a = KeyCipher::new(&[7; 32]);
        let b = KeyCipher::new(&[8; 32]);
        let sealed = a.seal("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap();
        assert!(!sealed.contains("wJalr"));
        assert_eq!(
            a.open(&sealed).as_deref(),
            Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        );
        assert_eq!(b.open(&sealed), None);
        // Sealing twice gives two ciphertexts (fresh nonces).
        assert_ne!(a.seal("x").unwrap(), a.seal("x").unwrap());
        assert_eq!(a.open("not base64!"), None);
        assert_eq!(a.open("AAAA"), None);
    }

    #[test]
    fn ids_and_secrets_have_aws_shapes() {
        let id = new_key_id().unwrap();
        assert!(is_key_id(&id), "{id}");
        assert_eq!(new_secret().unwrap().len(), 40);
        assert!(!is_key_id("AKIA0000000000000000"));
        assert!(!is_key_id(&"a".repeat(64)));
    }

    async fn node(store: &Arc<crate::store::MemoryAuthStore>, dir: &std::path::Path) -> Arc<IdentityService> {
        let ca = Arc::new(crate::pki::CertificateAuthority::load_or_create(dir).unwrap());
        let cfg = super::super::IdentityConfig {
            arn: crate::policy::ArnConfig::new("us-east-1", "000000000000").unwrap(),
            anonymous: super::super::AnonymousAccess::Deny,
            client_auth: crate::tls::ClientAuth::Optional,
            cert_validity_days: 1,
            keys: Arc::new(KeyCipher::new(&[9; 32])),
        };
        let store: Arc<dyn crate::store::AuthStore> = store.clone();
        IdentityService::start(store, ca, cfg, Arc::new(super::super::NoThings))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn key_changes_reach_the_other_nodes_of_a_shared_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::MemoryAuthStore::shared());
        let a = node(&store, dir.path()).await;
        let b = node(&store, dir.path()).await;
        let (admin, _) = a.create_access_key("admin", true).await.unwrap();
        let (rec, secret) = a.create_access_key("device", false).await.unwrap();
        let id = rec.access_key_id.as_str();
        // b rereads once, then not again while nothing changes.
        assert!(b.sync_access_keys().await.unwrap());
        assert!(!b.sync_access_keys().await.unwrap());
        assert_eq!(b.signing_secret(id).unwrap().as_ref(), secret);
        assert!(b.http_caller(id, None).is_ok());
        a.set_access_key_status(id, KeyStatus::Inactive).await.unwrap();
        assert!(b.signing_secret(id).is_ok(), "b has not looked yet");
        assert!(b.sync_access_keys().await.unwrap());
        assert!(b.signing_secret(id).is_err());
        assert_eq!(b.access_key(id).unwrap().status, KeyStatus::Inactive);
        // b, back in sync before it changes anything, does not write the stale record back.
        b.set_access_key_status(id, KeyStatus::Active).await.unwrap();
        a.sync_access_keys().await.unwrap();
        assert!(a.signing_secret(id).is_ok());
        a.delete_access_key(id).await.unwrap();
        // The background task catches up on its own within a few intervals.
        let deadline = std::time::Instant::now() + KEY_SYNC_INTERVAL * 6;
        while b.signing_secret(id).is_ok() {
            assert!(std::time::Instant::now() < deadline, "b never saw the deletion");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(b.access_key(id).is_err());
        assert!(b.signing_secret(&admin.access_key_id).is_ok());
        // Changing a key another node deleted is a clean not-found, not a resurrection.
        assert!(matches!(
            b.set_access_key_status(id, KeyStatus::Active).await,
            Err(IdentityError::NotFound(_))
        ));
        let store: &dyn crate::store::AuthStore = store.as_ref();
        assert!(store.get(AuthTable::AccessKeys, id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_node_of_its_own_store_never_rereads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::MemoryAuthStore::default());
        let a = node(&store, dir.path()).await;
        a.create_access_key("admin", true).await.unwrap();
        assert!(!a.sync_access_keys().await.unwrap());
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys").join("kek");
        let a = KeyCipher::load_or_create(&p).unwrap();
        let sealed = a.seal("s").unwrap();
        let b = KeyCipher::load_or_create(&p).unwrap();
        assert_eq!(b.open(&sealed).as_deref(), Some("s"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&p, "short").unwrap();
        assert!(KeyCipher::load_or_create(&p).is_err());
    }
}
