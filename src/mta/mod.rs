//! Mail over XMPP (xep-drafts/xep-xmta-mail.xml): the payload elements and the receiving
//! side. The sending side is the courier in `delivery::queue`.

pub mod payload;
pub mod rate;
pub mod receive;
