//! The SMTP DATA reader (src/smtp/data.rs) against a plain reference reading of RFC 5321
//! §4.1.1.4 / §4.5.2 with xmta's strict rules: data ends only at CRLF "." CRLF, a bare CR or
//! LF refuses the message, a leading dot is removed, the size limit refuses it. Both must
//! agree on where the data ends and on the message (or the refusal) for any byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmta::smtp::data::{DataProblem, DataReader};

fn reference(lines: &[&[u8]], max: usize) -> (Option<usize>, Result<Vec<u8>, DataProblem>) {
    let mut msg = Vec::new();
    let (mut bare, mut big) = (false, false);
    let mut prev_crlf = true;
    for (i, l) in lines.iter().enumerate() {
        if *l == b".\r\n" && prev_crlf {
            let r = if bare {
                Err(DataProblem::BareLineEnd)
            } else if big {
                Err(DataProblem::TooBig)
            } else {
                Ok(msg)
            };
            return (Some(i), r);
        }
        prev_crlf = l.ends_with(b"\r\n");
        match l.strip_suffix(b"\r\n") {
            Some(t) if !t.contains(&b'\r') && !t.contains(&b'\n') => {
                if bare || big {
                    continue;
                }
                let t = t.strip_prefix(b".").unwrap_or(t);
                if msg.len() + t.len() + 2 > max {
                    big = true;
                    msg.clear();
                } else {
                    msg.extend_from_slice(t);
                    msg.extend_from_slice(b"\r\n");
                }
            }
            _ => bare = true,
        }
    }
    let r = if bare {
        Err(DataProblem::BareLineEnd)
    } else if big {
        Err(DataProblem::TooBig)
    } else {
        Ok(msg)
    };
    (None, r)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let max = 16 + data[0] as usize * 8;
    let lines: Vec<&[u8]> = data[1..].split_inclusive(|&b| b == b'\n').collect();
    let mut reader = DataReader::new(max);
    let mut end = None;
    for (i, l) in lines.iter().enumerate() {
        if reader.line(l) {
            end = Some(i);
            break;
        }
    }
    let got = reader.finish();
    let (want_end, want) = reference(&lines, max);
    assert_eq!(end, want_end, "end of data");
    assert_eq!(got, want, "message");
    if let Ok(m) = &got {
        // Never a bare CR or LF in what is stored.
        for (i, &b) in m.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && m[i - 1] == b'\r');
            }
            if b == b'\r' {
                assert_eq!(m.get(i + 1), Some(&b'\n'));
            }
        }
        assert!(m.len() <= max);
    }
});
