//! The XMPP stream reader on arbitrary bytes: the header, then stanzas until an error or the
//! end. It must never panic, never hang, and never hand out a stanza larger than its limit;
//! the stanzas it reads with its plain text runs are those it reads with every byte through
//! the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmta::xml::{XmlReader, element_to_string};

const LIMIT: usize = 4096;

async fn stanzas(mut reader: XmlReader<&[u8]>) -> Vec<String> {
    let mut out = Vec::new();
    if reader.read_header().await.is_err() {
        return out;
    }
    while let Ok(Some(el)) = reader.next().await {
        out.push(element_to_string(&el, "jabber:server"));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
        let fast = stanzas(XmlReader::new(data, LIMIT)).await;
        let reference = stanzas(XmlReader::new(data, LIMIT).without_plain_text_runs()).await;
        // The fast path counts a run against the limit as soon as it reads it, the parser
        // only at the run's end: a stream cut off there may end one stanza earlier.
        let n = fast.len().min(reference.len());
        assert_eq!(fast[..n], reference[..n], "plain text runs changed a stanza");
        assert!(reference.len() - n <= 1 && fast.len() - n <= 1);
        let mut reader = XmlReader::new(data, LIMIT);
        if reader.read_header().await.is_err() {
            return;
        }
        while let Ok(Some(el)) = reader.next().await {
            // What was accepted fits the limit once serialized again (the writer escapes, so
            // allow for entity expansion of the accepted text).
            let s = element_to_string(&el, "jabber:server");
            assert!(
                s.len() <= LIMIT * 6,
                "stanza of {} bytes passed a {LIMIT} limit",
                s.len()
            );
        }
    });
});
