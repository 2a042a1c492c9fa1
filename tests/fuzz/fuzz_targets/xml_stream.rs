//! The XMPP stream reader on arbitrary bytes: the header, then stanzas until an error or the
//! end. It must never panic, never hang, and never hand out a stanza larger than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmta::xml::{XmlReader, element_to_string};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    futures::executor::block_on(async {
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
