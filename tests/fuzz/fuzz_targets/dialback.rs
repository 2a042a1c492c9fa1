//! Dialback elements (XEP-0220) after a fixed stream header: parsing must never panic, and
//! what parses serialises back (with xmta's own writer functions) to the same element.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xmta::s2s::dialback::{self, Dialback};
use xmta::xml::XmlReader;

const HEADER: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' version='1.0'>";

fn reparse(s: &str) -> Option<Dialback> {
    let mut input = HEADER.to_vec();
    input.extend_from_slice(s.as_bytes());
    futures::executor::block_on(async {
        let mut r = XmlReader::new(&input[..], 1 << 20);
        r.read_header().await.ok()?;
        let el = r.next().await.ok()??;
        Dialback::try_from(&el).ok()
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = HEADER.to_vec();
    input.extend_from_slice(data);
    let parsed: Vec<Dialback> = futures::executor::block_on(async {
        let mut out = Vec::new();
        let mut r = XmlReader::new(&input[..], 65536);
        if r.read_header().await.is_err() {
            return out;
        }
        while let Ok(Some(el)) = r.next().await {
            if let Ok(db) = Dialback::try_from(&el) {
                out.push(db);
            }
        }
        out
    });
    for db in parsed {
        let again = match &db {
            Dialback::ResultRequest { from, to, key } => dialback::result_request(from, to, key),
            Dialback::VerifyRequest { from, to, id, key } => {
                dialback::verify_request(from, to, id, key)
            }
            Dialback::VerifyAnswer { from, to, id, kind } => {
                dialback::verify_answer(from, to, id, *kind)
            }
            Dialback::ResultAnswer { .. } => continue,
        };
        assert_eq!(reparse(&again).as_ref(), Some(&db), "round trip of {again}");
    }
});
