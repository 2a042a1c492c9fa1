//! Mail addresses, domain names and the JIDs that carry them.
//!
//! xmta moves mail between domains over XMPP server-to-server streams, so
//! every address it handles has two spellings: the RFC 5321 mailbox
//! (`local@domain`, with SMTPUTF8 localparts and IDNA domains) and the XMPP
//! address (JID) that names the same mailbox on the wire, with the characters
//! a JID localpart cannot hold escaped per XEP-0106. This module parses and
//! validates the first, converts between the two, and defines the canonical
//! key (`canonical()`) under which xmta stores users and mailboxes, so that
//! `Bob@Example.ORG`, `"bob"@example.org` and the JID `bob@example.org` all
//! find the same mailbox.
//!
//! Decisions worth knowing:
//!
//! * Domains are kept as lowercase A-labels (punycode ASCII) everywhere,
//!   including in JIDs. RFC 7622 §3.2.1 prefers U-labels in JIDs, but the
//!   `jid` crate xmta uses applies IDNA2003 nameprep, which maps deviation
//!   characters (`straße` becomes `strasse`) and so would turn one IDNA2008
//!   domain into another; A-labels pass through it unchanged. Incoming JIDs
//!   may use either form: [`from_jid`](MailAddress::from_jid) and
//!   [`domain_of_jid`] normalize both to the A-label.
//! * Some valid mailboxes have no JID: a localpart with a leading or
//!   trailing space (which XEP-0106 forbids to escape) or with characters
//!   nodeprep prohibits (emoji, unassigned code points), or a domain that
//!   cannot be a JID domainpart (a label such as `ab--cd`, with hyphens in
//!   the third and fourth places, which RFC 7622 §3.2 excludes and host
//!   names still use). They are still mail
//!   addresses (XEP-MTA §6.1: receivers MUST accept them in the envelope);
//!   [`to_jid`](MailAddress::to_jid) is `None` for them, and the stanza then
//!   carries the domain JID. Their canonical localpart is the value with
//!   Unicode lowercasing.
//! * The canonical localpart is the nodeprep form (RFC 6122) of the
//!   localpart: for ASCII that is exactly lowercasing; for other scripts it
//!   also applies Unicode case folding and NFKC, which is what any XMPP
//!   server does to the JID, so the key matches what comes back over XMPP.
//! * Backslashes are escaped only where they begin one of the ten XEP-0106
//!   escape sequences (XEP-0106 §4.1 rule 7 and §4.3). The XEP's own example
//!   table disagrees for three entries (`c:\net` is listed as `c\3a\5cnet`);
//!   both spellings unescape to the same localpart, and the `jid` crate's
//!   tests use the rule-conforming `c\3a\net`, as this module does.

use std::fmt;
use std::str::FromStr;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Longest localpart, in octets of its wire form (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_LEN: usize = 64;
/// Longest mailbox `local@domain`, in octets (RFC 5321 §4.5.3.1.3 path limit minus `<>`).
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest domain name, in octets of its A-label form without the root dot.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest DNS label, in octets.
pub const MAX_LABEL_LEN: usize = 63;

/// Inputs longer than this are refused before any other work is done.
const MAX_INPUT_LEN: usize = 1024;

/// What is wrong with an address, a domain or a JID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("the address is empty")]
    Empty,
    #[error("the address is {len} octets long; the limit is 254")]
    TooLong { len: usize },
    #[error("the address contains the control character {ch:?}")]
    ControlChar { ch: char },
    #[error("the address {input:?} has no @ between the localpart and the domain")]
    MissingAt { input: String },
    #[error(
        "the address {input:?} has more than one unquoted @ (quote the localpart if it really contains @)"
    )]
    MultipleAt { input: String },
    #[error("the localpart (the part before the @) is empty")]
    EmptyLocal,
    #[error("the localpart is {len} octets long; the limit is 64")]
    LocalTooLong { len: usize },
    #[error(
        "the localpart contains {ch:?}, which is not allowed unless the localpart is quoted (\"like this\"@example.org)"
    )]
    InvalidLocalChar { ch: char },
    #[error(
        "the localpart {local:?} starts or ends with a dot or has two dots in a row, which only a quoted localpart may"
    )]
    BadDots { local: String },
    #[error("the quoted localpart has no closing double quote")]
    UnterminatedQuote,
    #[error("the quoted localpart has a backslash before {ch:?}, which cannot be quoted")]
    BadQuotedPair { ch: char },
    #[error("unexpected text after the quoted localpart; expected @ and a domain")]
    TextAfterQuote,
    #[error("the domain is empty")]
    EmptyDomain,
    #[error("address literals such as {literal:?} are not accepted; a domain name is required")]
    AddressLiteral { literal: String },
    #[error(
        "the domain {domain:?} contains {ch:?}; a domain name has only letters, digits, hyphens and dots"
    )]
    InvalidDomainChar { domain: String, ch: char },
    #[error("the domain {domain:?} has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel { domain: String },
    #[error("the domain label {label:?} is {len} octets long; the limit is 63")]
    LabelTooLong { label: String, len: usize },
    #[error("the domain {domain:?} is {len} octets long; the limit is 253")]
    DomainTooLong { domain: String, len: usize },
    #[error("the domain {domain:?} is not a valid internationalized domain name (IDNA2008)")]
    InvalidIdna { domain: String },
    #[error(
        "the domain label {label:?} is not letters, digits and hyphens (no hyphen first or last)"
    )]
    NotLdh { label: String },
    #[error("the domain {domain:?} looks like an IP address; a domain name is required")]
    NumericDomain { domain: String },
    #[error(
        "the localpart {local:?} starts or ends with a space, which an XMPP address cannot carry (XEP-0106)"
    )]
    JidEdgeSpace { local: String },
    #[error("the localpart {local:?} cannot be carried in an XMPP address: {reason}")]
    NotJidLocal { local: String, reason: String },
    #[error("the JID {jid:?} has no localpart, so it names a server rather than a mailbox")]
    JidWithoutLocal { jid: String },
    #[error("the JID {jid:?} is not valid: {reason}")]
    InvalidJid { jid: String, reason: String },
}

/// A mail address: a localpart and a domain.
///
/// The localpart is kept as given (its value: the quotes and backslashes of
/// a quoted string are removed, the case is preserved); the domain is the
/// lowercase A-label form. Equality is exact on the localpart, so
/// `Bob@x.example != bob@x.example`: compare [`canonical`](Self::canonical)
/// keys to find out whether two addresses name the same mailbox.
///
/// Every `MailAddress` can be carried in a JID (see the module notes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MailAddress {
    /// The localpart's value as given: unquoted, case preserved.
    local: String,
    /// Lowercase A-label domain, no trailing dot.
    domain: String,
    /// The localpart's value after nodeprep (or lowercased, without a JID form): the key
    /// part of `canonical()`.
    canonical_local: String,
    /// Whether a JID can carry this mailbox.
    has_jid: bool,
}

impl MailAddress {
    /// Parses an RFC 5321 mailbox, `local@domain`.
    ///
    /// One pair of surrounding angle brackets is removed. The localpart is a
    /// dot-atom or a quoted string; UTF-8 is allowed in both (RFC 6531). The
    /// domain is converted from U-labels to lowercase A-labels; address
    /// literals (`[192.0.2.1]`) are refused. The null path `<>` is refused
    /// as [`AddrError::Empty`].
    pub fn parse(s: &str) -> Result<MailAddress, AddrError> {
        if s.len() > MAX_INPUT_LEN {
            return Err(AddrError::TooLong { len: s.len() });
        }
        let s = s
            .strip_prefix('<')
            .and_then(|inner| inner.strip_suffix('>'))
            .unwrap_or(s);
        if s.is_empty() {
            return Err(AddrError::Empty);
        }
        if let Some(ch) = s.chars().find(|c| c.is_control()) {
            return Err(AddrError::ControlChar { ch });
        }
        let (local, domain) = split_mailbox(s)?;
        if domain.is_empty() {
            return Err(AddrError::EmptyDomain);
        }
        if domain.starts_with('[') {
            return Err(AddrError::AddressLiteral {
                literal: clip(domain),
            });
        }
        let domain = normalize_domain(domain)?;
        MailAddress::from_parts(local, domain)
    }

    /// The localpart as given (unquoted value, case preserved).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain: lowercase A-label ASCII, without a trailing dot.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The key xmta stores users and mailboxes by: the canonical localpart
    /// (lowercased; nodeprep for non-ASCII), quoted if it needs quoting, `@`,
    /// the A-label domain. It parses back to an equal key.
    pub fn canonical(&self) -> String {
        format!("{}@{}", quote_local(&self.canonical_local), self.domain)
    }

    /// The bare JID for this mailbox: the canonical localpart escaped per
    /// XEP-0106, `@`, the A-label domain (see the module notes for why not
    /// U-labels). The result is already in the form the `jid` crate
    /// normalizes to.
    pub fn to_jid(&self) -> Option<String> {
        self.has_jid.then(|| {
            format!(
                "{}@{}",
                jid_escape_local(&self.canonical_local),
                self.domain
            )
        })
    }

    /// The JID for this mailbox, or the domain JID when it has none (XEP-MTA §6.1).
    pub fn jid_or_domain(&self) -> String {
        self.to_jid().unwrap_or_else(|| self.domain.clone())
    }

    /// The mailbox a JID names: the JID's localpart, nodeprepped and
    /// unescaped per XEP-0106, `@` its domain (U-label or A-label accepted,
    /// normalized to the A-label). A resource, if any, is ignored.
    pub fn from_jid(jid: &str) -> Result<MailAddress, AddrError> {
        if jid.len() > MAX_INPUT_LEN {
            return Err(AddrError::TooLong { len: jid.len() });
        }
        let bare = bare_jid(jid);
        let Some((node, domain)) = bare.split_once('@') else {
            return Err(AddrError::JidWithoutLocal { jid: clip(jid) });
        };
        if node.is_empty() {
            return Err(AddrError::JidWithoutLocal { jid: clip(jid) });
        }
        if domain.contains('@') {
            return Err(AddrError::InvalidJid {
                jid: clip(jid),
                reason: "it has more than one @".into(),
            });
        }
        let prepped = jid::NodePart::new(node).map_err(|e| AddrError::InvalidJid {
            jid: clip(jid),
            reason: e.to_string(),
        })?;
        let prepped = prepped.as_str();
        if prepped.starts_with("\\20") || prepped.ends_with("\\20") {
            return Err(AddrError::InvalidJid {
                jid: clip(jid),
                reason: "an escaped localpart may not start or end with \\20 (XEP-0106)".into(),
            });
        }
        let domain = normalize_domain(domain)?;
        MailAddress::from_parts(jid_unescape_local(prepped), domain)
    }

    /// Builds an address from a localpart value (already unquoted) and a
    /// normalized domain, enforcing every rule that does not depend on the
    /// spelling the localpart came in.
    fn from_parts(local: String, domain: String) -> Result<MailAddress, AddrError> {
        check_local_value(&local)?;
        let (canonical_local, local_has_jid) = match jid_canonical_local(&local) {
            Ok(c) => (c, true),
            Err(AddrError::JidEdgeSpace { .. }) | Err(AddrError::NotJidLocal { .. }) => {
                // Lowercasing can make a JID localpart of it (`Ϗ`, unassigned in the Unicode
                // version nodeprep uses, lowercases to the assigned `ϗ`): the key is then that
                // JID's form, so that it parses back to itself.
                let lower = local.to_lowercase();
                match jid_canonical_local(&lower) {
                    Ok(c) => (c, true),
                    Err(_) => (lower, false),
                }
            }
            Err(e) => return Err(e),
        };
        // A JID domainpart is stricter than a mail domain (RFC 7622 §3.2: NR-LDH labels and
        // U-labels only): a label with hyphens in the third and fourth places that is not an
        // A-label (`ab--cd`, real host names have them) is fine in mail but no JID's.
        let has_jid = local_has_jid && jid::DomainPart::new(&domain).is_ok();
        // The key must parse back, so its localpart is held to the limits too: lowercasing
        // can lengthen it (`İ`, two octets, becomes `i̇`, three).
        let key_local = quote_local(&canonical_local).len();
        if key_local > MAX_LOCAL_LEN {
            return Err(AddrError::LocalTooLong { len: key_local });
        }
        let len = quote_local(&local).len().max(key_local) + 1 + domain.len();
        if len > MAX_ADDRESS_LEN {
            return Err(AddrError::TooLong { len });
        }
        Ok(MailAddress {
            local,
            domain,
            canonical_local,
            has_jid,
        })
    }
}

impl fmt::Display for MailAddress {
    /// `local@domain`, with the localpart quoted if it is not a dot-atom.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", quote_local(&self.local), self.domain)
    }
}

impl FromStr for MailAddress {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<MailAddress, AddrError> {
        MailAddress::parse(s)
    }
}

/// Normalizes a domain name: IDNA2008 (UTS #46 non-transitional) to the
/// lowercase A-label form, one trailing root dot removed. Refuses empty
/// labels, labels over 63 octets, names over 253 octets, anything that is
/// not letters, digits and inner hyphens after conversion, address literals
/// and all-numeric top-level labels (IP addresses).
pub fn normalize_domain(s: &str) -> Result<String, AddrError> {
    if s.len() > MAX_INPUT_LEN {
        return Err(AddrError::DomainTooLong {
            domain: clip(s),
            len: s.len(),
        });
    }
    let raw = s.strip_suffix('.').unwrap_or(s);
    if raw.is_empty() {
        return Err(AddrError::EmptyDomain);
    }
    if raw.starts_with('[') {
        return Err(AddrError::AddressLiteral { literal: clip(s) });
    }
    if let Some(ch) = raw
        .chars()
        .find(|c| c.is_ascii() && !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(AddrError::InvalidDomainChar {
            domain: clip(s),
            ch,
        });
    }
    if raw.split('.').any(str::is_empty) {
        return Err(AddrError::EmptyLabel { domain: clip(s) });
    }
    let ascii = Uts46::new()
        .to_ascii(
            raw.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .map_err(|_| AddrError::InvalidIdna { domain: clip(s) })?;
    // UTS #46 maps ideographic full stops to '.', so a root dot can appear only now.
    let ascii: &str = &ascii;
    let ascii = ascii
        .strip_suffix('.')
        .unwrap_or(ascii)
        .to_ascii_lowercase();
    if ascii.is_empty() {
        return Err(AddrError::EmptyDomain);
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err(AddrError::EmptyLabel { domain: clip(s) });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(AddrError::LabelTooLong {
                label: clip(label),
                len: label.len(),
            });
        }
        let ldh = label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ldh || label.starts_with('-') || label.ends_with('-') {
            return Err(AddrError::NotLdh { label: clip(label) });
        }
    }
    if ascii.len() > MAX_DOMAIN_LEN {
        return Err(AddrError::DomainTooLong {
            domain: clip(s),
            len: ascii.len(),
        });
    }
    let tld = ascii.rsplit('.').next().unwrap_or_default();
    if tld.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddrError::NumericDomain { domain: clip(s) });
    }
    Ok(ascii)
}

/// The normalized (A-label) domain of a JID: `a@b.test/res` gives `b.test`,
/// and so does `b.test`.
pub fn domain_of_jid(jid: &str) -> Result<String, AddrError> {
    let bare = bare_jid(jid);
    let domain = bare.split_once('@').map_or(bare, |(_, domain)| domain);
    if domain.contains('@') {
        return Err(AddrError::InvalidJid {
            jid: clip(jid),
            reason: "it has more than one @".into(),
        });
    }
    normalize_domain(domain)
}

/// The XEP-0106 escape sequences and the characters they stand for.
const JID_ESCAPES: [(char, &str); 10] = [
    (' ', "20"),
    ('"', "22"),
    ('&', "26"),
    ('\'', "27"),
    ('/', "2f"),
    (':', "3a"),
    ('<', "3c"),
    ('>', "3e"),
    ('@', "40"),
    ('\\', "5c"),
];

/// The character escaped by the sequence starting at byte `at` of `s` (a
/// backslash), if the next two bytes are one of the ten codes. Case matters:
/// `\2F` is not an escape.
fn escape_at(s: &str, at: usize) -> Option<char> {
    let code = s.get(at + 1..at + 3)?;
    JID_ESCAPES
        .iter()
        .find(|(_, hex)| *hex == code)
        .map(|(ch, _)| *ch)
}

/// Escapes a localpart for a JID per XEP-0106: space `"` `&` `'` `/` `:`
/// `<` `>` `@` become `\20 \22 \26 \27 \2f \3a \3c \3e \40`, and a
/// backslash becomes `\5c` only where it begins one of the ten escape
/// sequences (so `c:\net` becomes `c\3a\net`, and `\5c` becomes `\5c5c`).
///
/// This is the plain transformation: XEP-0106 forbids an escaped localpart
/// to start or end with `\20`, so a value starting or ending with a space
/// has no valid JID; [`MailAddress::parse`] refuses such localparts.
pub fn jid_escape_local(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for (at, ch) in s.char_indices() {
        if ch == '\\' && escape_at(s, at).is_none() {
            out.push('\\');
        } else if let Some((_, hex)) = JID_ESCAPES.iter().find(|(c, _)| *c == ch) {
            out.push('\\');
            out.push_str(hex);
        } else {
            out.push(ch);
        }
    }
    out
}

/// Undoes [`jid_escape_local`]: each of the ten XEP-0106 escape sequences
/// becomes its character; any other backslash sequence is left as it is.
pub fn jid_unescape_local(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = 0;
    while let Some(found) = s.get(rest..).and_then(|tail| tail.find('\\')) {
        let at = rest + found;
        out.push_str(&s[rest..at]);
        match escape_at(s, at) {
            Some(ch) => {
                out.push(ch);
                rest = at + 3;
            }
            None => {
                out.push('\\');
                rest = at + 1;
            }
        }
    }
    out.push_str(&s[rest..]);
    out
}

/// The bare part of a JID: everything before the first `/` (RFC 7622 §3.1).
fn bare_jid(jid: &str) -> &str {
    jid.split_once('/').map_or(jid, |(bare, _)| bare)
}

/// Splits `s` (no brackets, no control characters) into the localpart's
/// value and the domain text, checking the localpart's syntax.
fn split_mailbox(s: &str) -> Result<(String, &str), AddrError> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(AddrError::UnterminatedQuote),
                Some((at, '"')) => break at,
                Some((_, '\\')) => match chars.next() {
                    Some((_, ch @ ' '..='~')) => value.push(ch),
                    Some((_, ch)) => return Err(AddrError::BadQuotedPair { ch }),
                    None => return Err(AddrError::UnterminatedQuote),
                },
                Some((_, ch)) => value.push(ch),
            }
        };
        let rest = &quoted[end + 1..];
        return match rest.strip_prefix('@') {
            Some(domain) if domain.contains('@') => Err(AddrError::MultipleAt { input: clip(s) }),
            Some(domain) => Ok((value, domain)),
            None if rest.is_empty() => Err(AddrError::MissingAt { input: clip(s) }),
            None => Err(AddrError::TextAfterQuote),
        };
    }
    let Some((local, domain)) = s.split_once('@') else {
        return Err(AddrError::MissingAt { input: clip(s) });
    };
    if domain.contains('@') {
        return Err(AddrError::MultipleAt { input: clip(s) });
    }
    if local.is_empty() {
        return Err(AddrError::EmptyLocal);
    }
    if let Some(ch) = local.chars().find(|&c| c != '.' && !is_atext(c)) {
        return Err(AddrError::InvalidLocalChar { ch });
    }
    if !is_dot_atom(local) {
        return Err(AddrError::BadDots { local: clip(local) });
    }
    Ok((local.to_owned(), domain))
}

/// Rules on a localpart's value, whatever spelling it came in.
fn check_local_value(local: &str) -> Result<(), AddrError> {
    if local.is_empty() {
        return Err(AddrError::EmptyLocal);
    }
    if let Some(ch) = local.chars().find(|c| c.is_control()) {
        return Err(AddrError::ControlChar { ch });
    }
    let len = quote_local(local).len();
    if len > MAX_LOCAL_LEN {
        return Err(AddrError::LocalTooLong { len });
    }
    Ok(())
}

/// The canonical localpart: the value as an XMPP server sees it, i.e.
/// unescape(nodeprep(escape(value))). Fails when no JID can carry the value.
fn jid_canonical_local(local: &str) -> Result<String, AddrError> {
    if local.starts_with(' ') || local.ends_with(' ') {
        return Err(AddrError::JidEdgeSpace { local: clip(local) });
    }
    let not_jid = |reason: String| AddrError::NotJidLocal {
        local: clip(local),
        reason,
    };
    let escaped = jid_escape_local(local);
    let prepped = jid::NodePart::new(&escaped).map_err(|e| not_jid(e.to_string()))?;
    let canonical = jid_unescape_local(prepped.as_str());
    // Normalization may have produced characters that change the escaping
    // (a full-width space becomes a space, for instance); the canonical form
    // must itself be stable and valid.
    if canonical.starts_with(' ') || canonical.ends_with(' ') {
        return Err(AddrError::JidEdgeSpace { local: clip(local) });
    }
    let again = jid_escape_local(&canonical);
    match jid::NodePart::new(&again) {
        Ok(node) if node.as_str() == again => {}
        _ => {
            return Err(not_jid(
                "its XMPP normal form is not stable under nodeprep".into(),
            ));
        }
    }
    if canonical.chars().any(|c| c.is_control()) || quote_local(&canonical).len() > MAX_LOCAL_LEN {
        return Err(not_jid(
            "its XMPP normal form is not a valid mail localpart".into(),
        ));
    }
    Ok(canonical)
}

/// RFC 5322 atext, extended with all non-ASCII characters (RFC 6531/6532).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

/// Whether `s` is a dot-atom: atoms of atext joined by single dots.
fn is_dot_atom(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A localpart's wire form: the value itself if it is a dot-atom, else a
/// quoted string with `"` and `\` backslash-escaped.
fn quote_local(local: &str) -> String {
    if is_dot_atom(local) {
        return local.to_owned();
    }
    let mut out = String::with_capacity(local.len() + 2);
    out.push('"');
    for ch in local.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
    out
}

/// Input echoed in an error, cut to a readable length.
fn clip(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JID examples of XEP-0106 §5.1: (user input, escaped JID as the
    /// XEP's table lists it, escaped JID this module produces).
    const XEP_EXAMPLES: [(&str, &str, &str); 12] = [
        ("space cadet", "space\\20cadet", "space\\20cadet"),
        (
            "call me \"ishmael\"",
            "call\\20me\\20\\22ishmael\\22",
            "call\\20me\\20\\22ishmael\\22",
        ),
        ("at&t guy", "at\\26t\\20guy", "at\\26t\\20guy"),
        ("d'artagnan", "d\\27artagnan", "d\\27artagnan"),
        ("/.fanboy", "\\2f.fanboy", "\\2f.fanboy"),
        ("::foo::", "\\3a\\3afoo\\3a\\3a", "\\3a\\3afoo\\3a\\3a"),
        ("<foo>", "\\3cfoo\\3e", "\\3cfoo\\3e"),
        ("user@host", "user\\40host", "user\\40host"),
        // The table escapes these backslashes although they begin no escape
        // sequence; the XEP's rules (§4.1 rule 7, §4.3) leave them alone.
        ("c:\\net", "c\\3a\\5cnet", "c\\3a\\net"),
        ("c:\\\\net", "c\\3a\\5c\\5cnet", "c\\3a\\\\net"),
        (
            "c:\\cool stuff",
            "c\\3a\\5ccool\\20stuff",
            "c\\3a\\cool\\20stuff",
        ),
        ("c:\\5commas", "c\\3a\\5c5commas", "c\\3a\\5c5commas"),
    ];

    #[test]
    fn xep0106_examples_escape_and_round_trip() {
        for (input, table, ours) in XEP_EXAMPLES {
            assert_eq!(jid_escape_local(input), ours, "escaping {input:?}");
            assert_eq!(jid_unescape_local(ours), input, "unescaping {ours:?}");
            assert_eq!(jid_unescape_local(table), input, "unescaping {table:?}");
        }
    }

    #[test]
    fn xep0106_examples_as_mail_addresses() {
        for (input, _, ours) in XEP_EXAMPLES {
            let mail = format!("{}@example.com", quote_local(input));
            let addr = MailAddress::parse(&mail).unwrap();
            assert_eq!(addr.local(), input);
            assert_eq!(addr.to_string(), mail);
            let jid = addr.to_jid().unwrap();
            assert_eq!(jid, format!("{ours}@example.com"));
            // The jid crate accepts it and leaves it as it is.
            let parsed = jid::BareJid::new(&jid).unwrap();
            assert_eq!(parsed.to_string(), jid);
            assert_eq!(parsed.node().unwrap().unescape().unwrap(), input);
            // And back.
            let back = MailAddress::from_jid(&jid).unwrap();
            assert_eq!(back, addr);
            assert_eq!(back.canonical(), addr.canonical());
        }
        let addr = MailAddress::parse("\"space cadet\"@example.com").unwrap();
        assert_eq!(addr.to_jid().unwrap(), "space\\20cadet@example.com");
    }

    #[test]
    fn xep0106_exceptions_are_left_alone() {
        for s in ["\\2plus\\2is\\4", "foo\\bar", "foob\\41r", "\\2F", "x\\"] {
            assert_eq!(jid_escape_local(s), s);
            assert_eq!(jid_unescape_local(s), s);
        }
        // A source address with escape-like sequences (XEP-0106 §4.2).
        assert_eq!(
            jid_escape_local("\\3and\\2is\\5cool"),
            "\\5c3and\\2is\\5c5cool"
        );
        assert_eq!(
            jid_unescape_local("\\5c3and\\2is\\5c5cool"),
            "\\3and\\2is\\5cool"
        );
        // Every special character, and escaping the escapes.
        assert_eq!(
            jid_escape_local(" \"&'/:<>@"),
            "\\20\\22\\26\\27\\2f\\3a\\3c\\3e\\40"
        );
        assert_eq!(jid_escape_local("\\20\\5c"), "\\5c20\\5c5c");
        assert_eq!(jid_unescape_local("\\5c20\\5c5c"), "\\20\\5c");
    }

    #[test]
    fn escaping_round_trips_exhaustively_on_a_small_alphabet() {
        let alphabet = ['\\', '2', '0', '5', 'c', ' ', '@', 'a'];
        let mut words = vec![String::new()];
        for _ in 0..5 {
            words = words
                .iter()
                .flat_map(|w| alphabet.iter().map(move |c| format!("{w}{c}")))
                .collect();
            for w in &words {
                let escaped = jid_escape_local(w);
                assert_eq!(jid_unescape_local(&escaped), *w, "{w:?} -> {escaped:?}");
                assert!(!escaped.contains(' ') && !escaped.contains('@'));
            }
        }
    }

    #[test]
    fn parses_plain_addresses() {
        let addr = MailAddress::parse("Bob.Smith+tag@Example.ORG").unwrap();
        assert_eq!(addr.local(), "Bob.Smith+tag");
        assert_eq!(addr.domain(), "example.org");
        assert_eq!(addr.to_string(), "Bob.Smith+tag@example.org");
        assert_eq!(addr.canonical(), "bob.smith+tag@example.org");
        assert_eq!(addr.to_jid().unwrap(), "bob.smith+tag@example.org");
        let bracketed = MailAddress::parse("<Bob.Smith+tag@example.org>").unwrap();
        assert_eq!(bracketed, addr);
        assert_eq!(
            "bob@b.test".parse::<MailAddress>().unwrap().domain(),
            "b.test"
        );
        // A trailing root dot is dropped.
        assert_eq!(MailAddress::parse("a@b.test.").unwrap().domain(), "b.test");
    }

    #[test]
    fn quoted_localparts() {
        let addr = MailAddress::parse(r#""john \"j\" doe"@example.org"#).unwrap();
        assert_eq!(addr.local(), r#"john "j" doe"#);
        assert_eq!(addr.to_string(), r#""john \"j\" doe"@example.org"#);
        assert_eq!(
            addr.to_jid().unwrap(),
            "john\\20\\22j\\22\\20doe@example.org"
        );
        // Needless quotes vanish; the address is the same.
        let plain = MailAddress::parse("\"bob\"@example.org").unwrap();
        assert_eq!(plain, MailAddress::parse("bob@example.org").unwrap());
        assert_eq!(plain.to_string(), "bob@example.org");
        // A quoted @ is not a separator.
        let at = MailAddress::parse("\"user@host\"@example.com").unwrap();
        assert_eq!(at.local(), "user@host");
        assert_eq!(at.to_jid().unwrap(), "user\\40host@example.com");
        // Canonical keys parse back.
        let key = addr.canonical();
        assert_eq!(key, r#""john \"j\" doe"@example.org"#);
        assert_eq!(MailAddress::parse(&key).unwrap().canonical(), key);
    }

    #[test]
    fn idna_domains() {
        let addr = MailAddress::parse("bob@Bücher.example").unwrap();
        assert_eq!(addr.domain(), "xn--bcher-kva.example");
        assert_eq!(addr.to_jid().unwrap(), "bob@xn--bcher-kva.example");
        let same = MailAddress::parse("bob@XN--BCHER-KVA.example").unwrap();
        assert_eq!(same, addr);
        // IDNA2008 keeps ß (UTS #46 non-transitional), unlike IDNA2003.
        assert_eq!(normalize_domain("straße.de").unwrap(), "xn--strae-oqa.de");
        // Ideographic full stop as a separator.
        assert_eq!(
            normalize_domain("bücher。example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_domain("Example.COM.").unwrap(), "example.com");
        // The JID keeps the A-label and the jid crate leaves it alone.
        let jid = jid::BareJid::new(&MailAddress::parse("a@straße.de").unwrap().to_jid().unwrap())
            .unwrap();
        assert_eq!(jid.domain().as_str(), "xn--strae-oqa.de");
    }

    #[test]
    fn utf8_localparts() {
        let addr = MailAddress::parse("Jöran@bücher.example").unwrap();
        assert_eq!(addr.local(), "Jöran");
        assert_eq!(addr.canonical(), "jöran@xn--bcher-kva.example");
        assert_eq!(addr.to_jid().unwrap(), "jöran@xn--bcher-kva.example");
        let back = MailAddress::from_jid("Jöran@Bücher.example/phone").unwrap();
        assert_eq!(back.canonical(), addr.canonical());
        // Nodeprep's case folding, which the key follows so that it matches
        // what any XMPP server makes of the JID.
        let sharp = MailAddress::parse("Straße@x.example").unwrap();
        assert_eq!(sharp.canonical(), "strasse@x.example");
        let jid = jid::BareJid::new(&sharp.to_jid().unwrap()).unwrap();
        assert_eq!(jid.to_string(), sharp.to_jid().unwrap());
        // Characters no JID can carry: still mail addresses, without a JID form.
        let emoji = MailAddress::parse("\u{1F600}@x.example").unwrap();
        assert_eq!(emoji.to_jid(), None);
        assert_eq!(emoji.jid_or_domain(), "x.example");
        assert_eq!(emoji.canonical(), "\u{1F600}@x.example");
        let nbsp = MailAddress::parse("\"A\u{00A0}b\"@x.example").unwrap();
        assert_eq!(nbsp.to_jid(), None);
        assert_eq!(
            MailAddress::parse(&nbsp.canonical()).unwrap().canonical(),
            nbsp.canonical()
        );
    }

    #[test]
    fn jid_conversion() {
        let addr = MailAddress::from_jid("d\\27artagnan@Musketeers.lit/elder").unwrap();
        assert_eq!(addr.local(), "d'artagnan");
        assert_eq!(addr.domain(), "musketeers.lit");
        assert_eq!(addr.to_string(), "d'artagnan@musketeers.lit");
        let addr = MailAddress::from_jid("tréville\\40musketeers.lit@smtp.gascon.fr").unwrap();
        assert_eq!(addr.local(), "tréville@musketeers.lit");
        assert_eq!(
            addr.to_string(),
            "\"tréville@musketeers.lit\"@smtp.gascon.fr"
        );
        // Nodeprep lowercases before unescaping.
        let addr = MailAddress::from_jid("Bob@example.org").unwrap();
        assert_eq!(addr.local(), "bob");
        // A resource may hold @ and /.
        let addr = MailAddress::from_jid("a@b.test/x@y/z").unwrap();
        assert_eq!(addr.to_string(), "a@b.test");
        assert!(matches!(
            MailAddress::from_jid("b.test"),
            Err(AddrError::JidWithoutLocal { .. })
        ));
        assert!(matches!(
            MailAddress::from_jid("@b.test"),
            Err(AddrError::JidWithoutLocal { .. })
        ));
        assert!(matches!(
            MailAddress::from_jid("\\20bob@b.test"),
            Err(AddrError::InvalidJid { .. })
        ));
        assert!(matches!(
            MailAddress::from_jid("bob\\20@b.test"),
            Err(AddrError::InvalidJid { .. })
        ));
        assert!(matches!(
            MailAddress::from_jid("a b@b.test"),
            Err(AddrError::InvalidJid { .. })
        ));
        assert!(MailAddress::from_jid("a@b@c.test").is_err());
        assert!(MailAddress::from_jid("a@[::1]").is_err());
        assert!(MailAddress::from_jid("a@127.0.0.1").is_err());
    }

    #[test]
    fn jid_domains() {
        assert_eq!(domain_of_jid("a@b.test/res").unwrap(), "b.test");
        assert_eq!(domain_of_jid("b.test").unwrap(), "b.test");
        assert_eq!(domain_of_jid("B.Test/res/x@y").unwrap(), "b.test");
        assert_eq!(
            domain_of_jid("a@Bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert!(matches!(domain_of_jid("a@"), Err(AddrError::EmptyDomain)));
        assert!(domain_of_jid("a@b@c").is_err());
    }

    #[test]
    fn leading_or_trailing_space_cannot_be_a_jid() {
        for s in ["\" bob\"@x.example", "\"bob \"@x.example"] {
            let a = MailAddress::parse(s).unwrap();
            assert_eq!(a.to_jid(), None, "{s}");
            assert_eq!(a.jid_or_domain(), "x.example");
        }
        assert_eq!(
            MailAddress::parse("\"b o b\"@x.example")
                .unwrap()
                .to_jid()
                .unwrap(),
            "b\\20o\\20b@x.example"
        );
    }

    /// Found by the smtp_args fuzz target: a mail domain with a reserved-LDH label (`--` in
    /// the third and fourth places, not an A-label) got a JID that the jid crate refuses.
    #[test]
    fn reserved_hyphen_labels_are_mail_domains_without_jids() {
        for s in [
            "ttmls@itmtp.ga-------------scotp6.n.gascon16.mtp.o66fr",
            "bob@r3---sn-abc.example",
            "bob@ab--cd.example",
        ] {
            let a = MailAddress::parse(s).unwrap();
            assert_eq!(a.to_jid(), None, "{s}");
            assert_eq!(MailAddress::parse(&a.canonical()).unwrap(), a);
            // Incoming JIDs with such a domain still name the mailbox.
            let j = MailAddress::from_jid(s).unwrap();
            assert_eq!(j.canonical(), a.canonical());
        }
        // A-labels are not reserved labels: they keep their JID.
        let a = MailAddress::parse("bob@xn--bcher-kva.example").unwrap();
        let jid = a.to_jid().unwrap();
        assert_eq!(jid, "bob@xn--bcher-kva.example");
        assert_eq!(jid::BareJid::new(&jid).unwrap().to_string(), jid);
    }

    /// The key parses back even where lowercasing lengthens the localpart: an address whose
    /// key would be over a limit is refused (the display form alone was checked before).
    #[test]
    fn keys_longer_than_the_address_are_held_to_the_limits() {
        // 32 × 'İ' is 64 octets; lowercased (no JID then, nodeprep's form is too long) 96.
        let long = format!("{}@x.example", "İ".repeat(32));
        assert!(matches!(
            MailAddress::parse(&long),
            Err(AddrError::LocalTooLong { len: 96 })
        ));
        let no_jid = format!("\u{1F600}{}@x.example", "İ".repeat(30));
        assert!(matches!(
            MailAddress::parse(&no_jid),
            Err(AddrError::LocalTooLong { .. })
        ));
        // Within the local limit but over the address limit once lowercased.
        let domain = format!("{}.example", vec!["a".repeat(50); 4].join("."));
        let total = format!("{}@{domain}", "İ".repeat(20));
        assert!(total.len() <= MAX_ADDRESS_LEN, "{}", total.len());
        assert!(matches!(
            MailAddress::parse(&total),
            Err(AddrError::TooLong { .. })
        ));
        // Shorter ones are fine and their keys parse back to themselves.
        let ok = MailAddress::parse(&format!("{}@x.example", "İ".repeat(21))).unwrap();
        let key = ok.canonical();
        assert_eq!(MailAddress::parse(&key).unwrap().canonical(), key);
    }

    /// Found by the smtp_args fuzz target: the lowercased localpart of a mailbox without a
    /// JID can have one, and its key then did not parse back to itself.
    #[test]
    fn keys_are_stable_when_lowercasing_makes_a_jid_localpart() {
        let a = MailAddress::parse("\u{BC}\u{3CF}h@x.example").unwrap();
        let key = a.canonical();
        assert_eq!(MailAddress::parse(&key).unwrap().canonical(), key);
        let jid = a.to_jid().unwrap();
        assert_eq!(MailAddress::from_jid(&jid).unwrap().canonical(), key);
    }

    #[test]
    fn rejects() {
        use AddrError::*;
        type Check = fn(&AddrError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, Empty)),
            ("<>", |e| matches!(e, Empty)),
            ("bob", |e| matches!(e, MissingAt { .. })),
            ("bob.example.org", |e| matches!(e, MissingAt { .. })),
            ("a@b@c.example", |e| matches!(e, MultipleAt { .. })),
            ("\"a\"@b@c.example", |e| matches!(e, MultipleAt { .. })),
            ("@b.example", |e| matches!(e, EmptyLocal)),
            ("\"\"@b.example", |e| matches!(e, EmptyLocal)),
            ("bob@", |e| matches!(e, EmptyDomain)),
            ("bob@.", |e| matches!(e, EmptyDomain)),
            ("bob smith@b.example", |e| {
                matches!(e, InvalidLocalChar { ch: ' ' })
            }),
            (" bob@b.example", |e| {
                matches!(e, InvalidLocalChar { ch: ' ' })
            }),
            ("bob@b.example ", |e| matches!(e, InvalidDomainChar { .. })),
            ("bob@b .example", |e| matches!(e, InvalidDomainChar { .. })),
            ("a\"b@b.example", |e| {
                matches!(e, InvalidLocalChar { ch: '"' })
            }),
            ("a\\b@b.example", |e| {
                matches!(e, InvalidLocalChar { ch: '\\' })
            }),
            ("a(b)@b.example", |e| {
                matches!(e, InvalidLocalChar { ch: '(' })
            }),
            (".bob@b.example", |e| matches!(e, BadDots { .. })),
            ("bob.@b.example", |e| matches!(e, BadDots { .. })),
            ("bo..b@b.example", |e| matches!(e, BadDots { .. })),
            ("bob\r\n@b.example", |e| {
                matches!(e, ControlChar { ch: '\r' })
            }),
            ("bob\0@b.example", |e| matches!(e, ControlChar { ch: '\0' })),
            ("\"a\tb\"@b.example", |e| {
                matches!(e, ControlChar { ch: '\t' })
            }),
            ("bob@b.exa\u{7f}mple", |e| matches!(e, ControlChar { .. })),
            ("a\u{85}b@b.example", |e| matches!(e, ControlChar { .. })),
            ("\"bob@b.example", |e| matches!(e, UnterminatedQuote)),
            ("\"bob\\\"@b.example", |e| matches!(e, UnterminatedQuote)),
            ("\"b\\ö\"@b.example", |e| {
                matches!(e, BadQuotedPair { ch: 'ö' })
            }),
            ("\"bob\"x@b.example", |e| matches!(e, TextAfterQuote)),
            ("\"bob\"", |e| matches!(e, MissingAt { .. })),
            ("bob@[192.0.2.1]", |e| matches!(e, AddressLiteral { .. })),
            ("bob@[IPv6:2001:db8::1]", |e| {
                matches!(e, AddressLiteral { .. })
            }),
            ("bob@192.0.2.1", |e| matches!(e, NumericDomain { .. })),
            ("bob@b..example", |e| matches!(e, EmptyLabel { .. })),
            ("bob@.b.example", |e| matches!(e, EmptyLabel { .. })),
            ("bob@b.example..", |e| matches!(e, EmptyLabel { .. })),
            ("bob@b_c.example", |e| {
                matches!(e, InvalidDomainChar { ch: '_', .. })
            }),
            ("bob@-b.example", |e| {
                matches!(e, InvalidIdna { .. } | NotLdh { .. })
            }),
            ("bob@b-.example", |e| {
                matches!(e, InvalidIdna { .. } | NotLdh { .. })
            }),
            ("bob@xn--zz.example", |e| matches!(e, InvalidIdna { .. })),
            ("<bob@b.example", |e| {
                matches!(e, InvalidLocalChar { ch: '<' })
            }),
            ("<<bob@b.example>>", |e| {
                matches!(e, InvalidLocalChar { ch: '<' })
            }),
        ];
        for (input, check) in cases {
            match MailAddress::parse(input) {
                Ok(addr) => panic!("{input:?} parsed as {addr}"),
                Err(e) => assert!(check(&e), "{input:?}: unexpected error {e:?}"),
            }
        }
    }

    #[test]
    fn length_limits() {
        let local64 = "a".repeat(64);
        assert!(MailAddress::parse(&format!("{local64}@b.example")).is_ok());
        let local65 = "a".repeat(65);
        assert!(matches!(
            MailAddress::parse(&format!("{local65}@b.example")),
            Err(AddrError::LocalTooLong { len: 65 })
        ));
        // Quotes count towards the 64 octets; UTF-8 counts in octets.
        assert!(matches!(
            MailAddress::parse(&format!("\"{}\"@b.example", "a b".repeat(21))),
            Err(AddrError::LocalTooLong { len: 65 })
        ));
        assert!(matches!(
            MailAddress::parse(&format!("{}@b.example", "ö".repeat(33))),
            Err(AddrError::LocalTooLong { len: 66 })
        ));
        let label63 = "b".repeat(63);
        let label64 = "b".repeat(64);
        assert!(normalize_domain(&format!("{label63}.example")).is_ok());
        assert!(matches!(
            normalize_domain(&format!("{label64}.example")),
            Err(AddrError::LabelTooLong { len: 64, .. })
        ));
        // 4 labels of 63 plus 3 dots is 255 octets.
        let long_domain = [label63.as_str(); 4].join(".");
        assert!(matches!(
            normalize_domain(&long_domain),
            Err(AddrError::DomainTooLong { len: 255, .. })
        ));
        // 64 + 1 + 190 = 255 octets in all.
        let domain190 = format!("{}.{}.{}", "c".repeat(63), "c".repeat(63), "c".repeat(62));
        assert_eq!(domain190.len(), 190);
        assert!(matches!(
            MailAddress::parse(&format!("{local64}@{domain190}")),
            Err(AddrError::TooLong { len: 255 })
        ));
        let domain189 = &domain190[1..];
        assert!(MailAddress::parse(&format!("{local64}@{domain189}")).is_ok());
        assert!(matches!(
            MailAddress::parse(&"a".repeat(5000)),
            Err(AddrError::TooLong { .. })
        ));
    }

    #[test]
    fn errors_read_well() {
        let e = MailAddress::parse("a@b@c.example").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the address \"a@b@c.example\" has more than one unquoted @ (quote the localpart if it really contains @)"
        );
        let e = MailAddress::parse("bob@[192.0.2.1]").unwrap_err();
        assert!(e.to_string().contains("address literals"), "{e}");
        let e = MailAddress::parse("bob\n@x.example").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the address contains the control character '\\n'"
        );
    }
}
