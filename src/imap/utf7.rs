//! Mailbox names in modified UTF-7 (RFC 3501 §5.1.3): clients send and expect names in it,
//! the store keeps them in UTF-8. Written here because none of the crates in use does it
//! (imap-codec leaves names as bytes) and the encoding is a page of code.
//!
//! Decoding is strict, as RFC 3501 asks: printable ASCII only, `&` starts a base64 run of
//! UTF-16 ended by `-`, `&-` is `&`, and a run may not encode printable ASCII, leave bits
//! over, break a surrogate pair or be empty.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn value(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// The UTF-8 form of a modified UTF-7 name; `Err` says what is wrong with it.
pub fn decode(name: &[u8]) -> Result<String, &'static str> {
    let mut out = String::new();
    let mut i = 0;
    while i < name.len() {
        let c = name[i];
        if !(0x20..0x7f).contains(&c) {
            return Err("mailbox name is not modified UTF-7 (8-bit or control character)");
        }
        if c != b'&' {
            out.push(c as char);
            i += 1;
            continue;
        }
        let Some(len) = name[i + 1..].iter().position(|&b| b == b'-') else {
            return Err("mailbox name is not modified UTF-7 (unterminated & run)");
        };
        let run = &name[i + 1..i + 1 + len];
        i += len + 2;
        if run.is_empty() {
            out.push('&');
            continue;
        }
        let mut units = Vec::new();
        let (mut bits, mut n) = (0u32, 0u32);
        for &b in run {
            let v = value(b).ok_or("mailbox name is not modified UTF-7 (bad base64)")?;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 16 {
                n -= 16;
                units.push(((bits >> n) & 0xffff) as u16);
            }
        }
        if n >= 6 || bits & ((1 << n) - 1) != 0 || units.is_empty() {
            return Err("mailbox name is not modified UTF-7 (bad base64 length)");
        }
        let text = String::from_utf16(&units)
            .map_err(|_| "mailbox name is not modified UTF-7 (bad UTF-16)")?;
        if text.chars().any(|ch| (' '..='~').contains(&ch)) {
            return Err("mailbox name is not modified UTF-7 (encoded ASCII)");
        }
        out.push_str(&text);
    }
    Ok(out)
}

/// The modified UTF-7 form of a UTF-8 name.
pub fn encode(name: &str) -> String {
    let mut out = String::new();
    let mut run: Vec<u16> = Vec::new();
    let flush = |out: &mut String, run: &mut Vec<u16>| {
        if run.is_empty() {
            return;
        }
        out.push('&');
        let (mut bits, mut n) = (0u32, 0u32);
        for u in run.drain(..) {
            bits = (bits << 16) | u32::from(u);
            n += 16;
            while n >= 6 {
                n -= 6;
                out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
            }
            bits &= (1 << n) - 1;
        }
        if n > 0 {
            out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
        }
        out.push('-');
    };
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush(&mut out, &mut run);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(ch.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut run);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples_and_round_trips() {
        assert_eq!(decode(b"Entw&APw-rfe").unwrap(), "Entwürfe");
        assert_eq!(encode("Entwürfe"), "Entw&APw-rfe");
        // RFC 3501 §5.1.3's example.
        assert_eq!(
            decode(b"~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(),
            "~peter/mail/台北/日本語"
        );
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(decode(b"A&-B").unwrap(), "A&B");
        assert_eq!(encode("A&B"), "A&-B");
        for s in ["😀 x", "a/b", "Ünïcødé/ß", "", "&&", "日"] {
            assert_eq!(decode(encode(s).as_bytes()).unwrap(), s, "{s}");
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        for bad in [
            &b"Entw\xc3\xbcrfe"[..],
            b"a&APw",
            b"a&AGE-",
            b"a&A-",
            b"a&APx-",
            b"a&2D0-",
            b"a&!!-",
            b"tab\there",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
