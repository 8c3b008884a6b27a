//! Shoal's authorisation.
//!
//! [`policy`] is the AWS IoT Core policy engine, as a pure library: it parses and validates
//! policy documents, substitutes policy variables for a connection, compiles the result once
//! per connection, and answers "may this client do this action on this resource" on the message
//! path in well under a microsecond, naming the statement that decided.
//!
//! [`pki`] is Shoal's certificate authority: the root CA in the data dir, the server certificate
//! of the TLS listeners, device certificates (`CreateKeysAndCertificate`, CSR signing), and the
//! X.509 facts policies use (certificate ids, subject and issuer fields).
#![deny(missing_docs)]

pub mod pki;
pub mod policy;
pub mod service;
pub mod sigv4;
pub mod store;
pub mod tls;
