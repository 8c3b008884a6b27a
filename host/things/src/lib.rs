//! Shoal's thing features, starting with the AWS-IoT-compatible device shadow.
//!
//! [`shadow`] is the shadow document engine: topic parsing, request validation, the merge,
//! delta, metadata and versioning rules of AWS IoT Device Shadows, and the exact response
//! payloads, as pure functions over [`shadow::StoredShadow`] documents. It does no I/O: the
//! broker and HTTP front ends load and store documents and publish the payloads it returns.
#![deny(missing_docs)]

pub mod registry;
pub mod shadow;
