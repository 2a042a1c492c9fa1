//! Outbound delivery: the queue runner that carries each queued message to its recipients'
//! domains, retries with growing jittered delays, expires, and bounces (RFC 3464 DSN).
//!
//! A recipient leaves the queue only on the receiving server's receipt (stored or failed)
//! or on expiry; a lost receipt means a retry, which the receiver's duplicate memory
//! absorbs (XEP-MTA §11).
//!
//! Recipients in legacy domains (no `[s2s.routes]` entry, no `_xmpp-server._tcp` SRV; see
//! `route`) go to `[smtp] smarthost` by SMTP when one is set, one transaction per queue
//! item (`smtp_client`), through the same retries and DSNs. Local copies go through one
//! seam (`local`): the built-in store or an external LMTP server.

pub mod dsn;
pub mod local;
pub mod queue;
pub mod route;
pub mod smtp_client;
pub mod submit;

pub use queue::Delivery;
