//! Reading the message after `354` (RFC 5321 §4.1.1.4, §4.5.2), strictly: only
//! `CRLF . CRLF` ends the data. A bare LF or a bare CR anywhere in the data makes the whole
//! message be refused (`550 5.5.2`) once the real end arrives, because MTAs that disagree
//! on where a message ends let an attacker smuggle a second message inside the first (SMTP
//! smuggling, 2023: `\n.\n`, `\r.\n`, `\r\n.\r`). This is Postfix's
//! `smtpd_forbid_bare_newline = yes` without the disconnect: everything up to the true
//! `CRLF . CRLF`, smuggled commands included, is discarded with the refused message.
//!
//! Long lines: RFC 5321 §4.5.3.1.6 sets 1000 octets (CRLF included) as the limit every
//! receiver must accept, not a cap it must enforce. Real mail has longer lines (HTML from
//! generators, long base64-free headers) and Postfix accepts them (splitting them). xmta
//! neither splits nor truncates, since both change the message and break DKIM: lines up to
//! `[smtp] max_line_bytes` (default 65536) are stored as sent; a message with a longer line
//! is refused whole with `554 5.5.2` at the end of DATA (§4.3.2 allows no other point).

/// What went wrong with a message's text, decided at the end of DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    BareLineEnd,
    LongLine,
    TooBig,
}

/// Accumulates DATA lines (each as read, up to and including its LF).
pub struct DataReader {
    max_bytes: usize,
    pub message: Vec<u8>,
    bare: bool,
    long: bool,
    too_big: bool,
    /// The previous line ended in CRLF (the DATA command's did), so a "." line now
    /// completes CRLF . CRLF.
    prev_crlf: bool,
}

impl DataReader {
    pub fn new(max_bytes: usize) -> DataReader {
        DataReader {
            max_bytes,
            message: Vec::new(),
            bare: false,
            long: false,
            too_big: false,
            prev_crlf: true,
        }
    }

    /// A line longer than the line limit was read and dropped; `tail` is its last bytes.
    pub fn long_line(&mut self, tail: &[u8]) {
        self.long = true;
        self.prev_crlf = tail.ends_with(b"\r\n");
    }

    /// Takes one line; returns true when it was the end-of-data line.
    pub fn line(&mut self, line: &[u8]) -> bool {
        let prev_crlf = std::mem::replace(&mut self.prev_crlf, line.ends_with(b"\r\n"));
        if line == b".\r\n" && prev_crlf {
            return true;
        }
        let Some(text) = line.strip_suffix(b"\r\n") else {
            // A line ending in a bare LF (or no line end, at EOF).
            self.bare = true;
            return false;
        };
        if memchr::memchr2(b'\r', b'\n', text).is_some() {
            self.bare = true;
            return false;
        }
        if self.bare || self.long || self.too_big {
            return false;
        }
        let text = text.strip_prefix(b".").unwrap_or(text);
        if self.message.len() + text.len() + 2 > self.max_bytes {
            self.too_big = true;
            self.message = Vec::new();
            return false;
        }
        self.message.extend_from_slice(text);
        self.message.extend_from_slice(b"\r\n");
        false
    }

    /// The message, or why it is refused.
    pub fn finish(self) -> Result<Vec<u8>, DataProblem> {
        if self.bare {
            Err(DataProblem::BareLineEnd)
        } else if self.too_big {
            Err(DataProblem::TooBig)
        } else if self.long {
            Err(DataProblem::LongLine)
        } else {
            Ok(self.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(input: &[u8]) -> (bool, Result<Vec<u8>, DataProblem>) {
        let mut r = DataReader::new(1000);
        let mut ended = false;
        for l in input.split_inclusive(|&b| b == b'\n') {
            if r.line(l) {
                ended = true;
                break;
            }
        }
        (ended, r.finish())
    }

    #[test]
    fn dot_stuffing_and_end() {
        let (end, m) = feed(b"a\r\n..b\r\n.\r\n");
        assert!(end);
        assert_eq!(m.unwrap(), b"a\r\n.b\r\n");
    }

    #[test]
    fn smuggling_does_not_end_data() {
        for bad in [
            &b"a\r\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r\n\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nb\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
        ] {
            let (end, m) = feed(bad);
            assert!(!end, "{:?}", String::from_utf8_lossy(bad));
            assert_eq!(m, Err(DataProblem::BareLineEnd));
        }
        let (end, m) = feed(b"a\nb\r\n.\r\n");
        assert!(end);
        assert_eq!(m, Err(DataProblem::BareLineEnd));
    }

    #[test]
    fn too_big() {
        let mut r = DataReader::new(10);
        assert!(!r.line(b"0123456789\r\n"));
        assert!(r.line(b".\r\n"));
        assert_eq!(r.finish(), Err(DataProblem::TooBig));
    }
}
