//! Outbound delivery: the queue runner that carries each queued message to its recipients'
//! domains, retries with growing jittered delays, expires, and bounces (RFC 3464 DSN).
//!
//! A recipient leaves the queue only on the receiving server's receipt (stored or failed)
//! or on expiry; a lost receipt means a retry, which the receiver's duplicate memory
//! absorbs (XEP-MTA §11).

pub mod dsn;
pub mod local;
pub mod queue;
pub mod route;
pub mod smtp_client;
pub mod submit;

pub use queue::Delivery;
