//! Sender and receiver agree: any message, chunked by the sender for a small stanza limit
//! (XEP-MTA §8.2), read back through the stream reader and decoded, reassembles to the same
//! bytes, and every stanza fits the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmta::mta::payload::{Envelope, MailChunk, OutgoingMail, mail_stanzas, sha256_hex};
use xmta::xml::{XmlReader, ns};

const HEADER: &str = "<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0'>";

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // The first byte picks the limit (16 KiB .. 80 KiB), the rest is the message.
    let limit = 16 * 1024 + (data[0] as usize) * 256;
    let message = &data[1..];
    if message.is_empty() {
        return;
    }
    let envelope = Envelope {
        mail_from: "alice@a.test".into(),
        rcpt_to: vec!["bob@b.test".into(), "<&'\"\u{1F600}>@b.test".into()],
    };
    let body = String::from_utf8_lossy(message).into_owned();
    let mail = OutgoingMail {
        stanza_from: "a.test",
        stanza_to: "b.test",
        mail_id: "0123abcd",
        transmission: "t1",
        envelope: &envelope,
        message,
        body: Some(body),
    };
    let Ok(stanzas) = mail_stanzas(&mail, limit) else {
        return;
    };
    let mut input = HEADER.to_string();
    for s in &stanzas {
        assert!(
            s.len() <= limit,
            "stanza of {} bytes over the limit {limit}",
            s.len()
        );
        input.push_str(s);
    }
    input.push_str("</stream:stream>");
    let joined = futures::executor::block_on(async {
        let mut r = XmlReader::new(input.as_bytes(), limit);
        r.read_header().await.expect("header");
        let mut joined = Vec::new();
        let mut n = 0;
        while let Some(stanza) = r.next().await.expect("a stanza the sender wrote") {
            let el = stanza.get_child("mail", ns::MTA).expect("<mail/>");
            let chunk = MailChunk::parse(el).expect("a valid chunk");
            assert_eq!(chunk.sha256, sha256_hex(message));
            if n == 0 {
                assert_eq!(chunk.envelope.as_ref(), Some(&envelope));
            }
            joined.extend_from_slice(&chunk.data);
            n += 1;
        }
        assert_eq!(n, stanzas.len());
        joined
    });
    assert_eq!(joined, message);
});
