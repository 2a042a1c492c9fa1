//! The mail protocol's decoders (XEP-MTA §7, §10, §12) on arbitrary stanzas after a fixed
//! stream header: `<mail/>`, `<receipt/>` and mail errors must never panic, and a parsed
//! chunk is consistent with its own limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmta::mta::payload::{MAX_CHUNKS, MAX_RCPTS, MailChunk, MailError, Receipt};
use xmta::xml::{XmlReader, ns};

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0'>";

fuzz_target!(|data: &[u8]| {
    let mut input = HEADER.to_vec();
    input.extend_from_slice(data);
    futures::executor::block_on(async {
        let mut r = XmlReader::new(&input[..], 1 << 20);
        if r.read_header().await.is_err() {
            return;
        }
        while let Ok(Some(stanza)) = r.next().await {
            let _ = MailError::parse(&stanza);
            for child in stanza.children() {
                if let Ok(chunk) = MailChunk::parse(child) {
                    assert!(chunk.chunk < chunk.chunks.max(1));
                    assert!(chunk.chunks <= MAX_CHUNKS);
                    if let Some(env) = &chunk.envelope {
                        assert!(env.rcpt_to.len() <= MAX_RCPTS);
                    }
                    assert!(chunk.data.len() as u64 <= chunk.size);
                }
                if child.is("receipt", ns::MTA) {
                    let _ = Receipt::parse(child);
                }
            }
        }
    });
});
