//! The seam where authentication and authorization plug in.
//!
//! The broker asks an [`Authorizer`] once per CONNECT (who is this?) and before every PUBLISH,
//! SUBSCRIBE and delivery (may they?). The identity issue supplies the real one (X.509
//! certificates and AWS IoT policies); until then [`AllowAll`] lets every client in.

use std::any::Any;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::message::ClientId;
use crate::topic::{Topic, TopicFilter};

/// Who a connection is, as established at CONNECT.
#[derive(Clone)]
pub struct Principal {
    /// A stable identifier (certificate id, access key id, or `anonymous`).
    pub id: Arc<str>,
    /// Extra facts later checks may use (thing name, certificate fields...).
    pub attributes: BTreeMap<String, String>,
    /// The authorizer's own per-connection state (e.g. policies compiled with this
    /// connection's variables), so `authorize` on the message path needs no lookups.
    pub grants: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("id", &self.id)
            .field("attributes", &self.attributes)
            .field("grants", &self.grants.is_some())
            .finish()
    }
}

impl Principal {
    /// The principal of an unauthenticated client.
    pub fn anonymous() -> Self {
        Principal {
            id: Arc::from("anonymous"),
            attributes: BTreeMap::new(),
            grants: None,
        }
    }

    /// The authorizer state, if it is of type `T`.
    pub fn grants<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.grants.as_deref().and_then(|g| g.downcast_ref::<T>())
    }
}

/// What a CONNECT presents.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    /// The client identifier (assigned one for an empty v5 id).
    pub client_id: &'a ClientId,
    /// Username, if sent.
    pub username: Option<&'a str>,
    /// Password, if sent.
    pub password: Option<&'a [u8]>,
    /// The peer's address.
    pub peer_addr: Option<SocketAddr>,
    /// The peer's certificate chain (DER, end entity first) on a TLS listener.
    pub peer_certificates: Vec<Vec<u8>>,
    /// The access key that signed the connection (MQTT over WebSocket with a SigV4 presigned
    /// URL, verified by the HTTP listener before the upgrade).
    pub access_key: Option<&'a str>,
    /// Which listener it came in on (`mqtt`, `mqtts`, `ws`).
    pub listener: &'static str,
    /// The client asks for a session that outlives the connection (v3 `cleanSession=0`, v5
    /// session expiry > 0): AWS's `iot:ConnectAttributes` `PersistentConnect`.
    pub persistent: bool,
    /// The CONNECT carries a will message (`iot:ConnectAttributes` `LastWill`).
    pub has_will: bool,
}

/// Why a CONNECT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    /// Bad or missing credentials (v5 0x86, v3 4).
    #[error("bad user name or password: {0}")]
    BadCredentials(String),
    /// Known but not allowed (v5 0x87, v3 5).
    #[error("not authorized: {0}")]
    NotAuthorized(String),
}

/// An action to authorize.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// PUBLISH to a topic (`iot:Publish`, and `iot:RetainPublish` when `retain`).
    Publish {
        /// The topic.
        topic: &'a Topic,
        /// The RETAIN flag.
        retain: bool,
    },
    /// SUBSCRIBE to a filter (`iot:Subscribe`).
    Subscribe {
        /// The filter.
        filter: &'a TopicFilter,
    },
    /// Delivery of a message on a topic to this principal (`iot:Receive`).
    Receive {
        /// The topic.
        topic: &'a Topic,
    },
}

/// Authenticates connections and authorizes their actions.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Establishes who is connecting, or refuses.
    async fn authenticate(&self, req: &ConnectRequest<'_>) -> Result<Principal, AuthRefusal>;

    /// Whether `principal` (connected as `client_id`) may do `action`. Called on the message
    /// path: must not block or await.
    fn authorize(&self, principal: &Principal, client_id: &ClientId, action: Action<'_>) -> bool;

    /// Whether a principal authenticated a moment ago is still valid. Checked once more right
    /// after the connection is attached, closing the window in which a revocation could run
    /// between `authenticate` and attachment (and so miss the connection).
    fn still_valid(&self, _principal: &Principal) -> bool {
        true
    }
}

/// Lets everyone connect and do anything (development default until identities land).
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

#[async_trait]
impl Authorizer for AllowAll {
    async fn authenticate(&self, _req: &ConnectRequest<'_>) -> Result<Principal, AuthRefusal> {
        Ok(Principal::anonymous())
    }

    fn authorize(&self, _p: &Principal, _c: &ClientId, _a: Action<'_>) -> bool {
        true
    }
}
