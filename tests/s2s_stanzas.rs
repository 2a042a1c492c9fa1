//! What a plain XMPP server sees when it talks to an xmta domain: discovery (XEP-MTA §5.1)
//! and answers to non-mail stanzas (XEP-MTA §13), never silence.

mod common;

use common::*;

#[test]
fn disco_and_non_mail_stanzas_get_answers() {
    let evil = FakePeer::start("127.0.0.36", "other.test");
    let mut b = Xmta::plain("b.test", "127.0.0.37");
    set_route(&mut b, "other.test", &evil.addr.to_string());
    b.start();
    b.add_user("bob@b.test");

    let mut r = Raw::connect(b.addr);
    r.open_stream("other.test", "b.test");
    r.send("<db:result from='other.test' to='b.test'>k</db:result>");
    assert!(
        r.read_until(15, |s| s.contains("type='valid'")),
        "{}",
        r.got
    );

    // §5.1: disco#info on the domain announces the mail feature.
    r.send("<iq type='get' from='other.test' to='b.test' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    b.wait_for("the disco answer", 15, || evil.seen().contains("id='d1'"));
    let seen = evil.seen();
    assert!(seen.contains("<feature var='urn:xmpp:mta:0'/>"), "{seen}");
    assert!(seen.contains("type='result'"), "{seen}");

    // §13.1: a chat message to a mail address is answered with service-unavailable.
    r.send("<message type='chat' from='carl@other.test/phone' to='bob@b.test' id='c1'><body>hi bob</body></message>");
    b.wait_for("the chat error", 15, || evil.seen().contains("id='c1'"));
    let seen = evil.seen();
    let at = seen.find("id='c1'").unwrap();
    let tail = &seen[seen[..at].rfind("<message").unwrap()..];
    assert!(tail.starts_with("<message type='error'"), "{tail}");
    assert!(
        tail.contains("<service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
        "{tail}"
    );
    assert!(tail.contains("to='carl@other.test/phone'"), "{tail}");

    // §13.2: a subscription request is declined.
    r.send("<presence type='subscribe' from='carl@other.test' to='bob@b.test'/>");
    b.wait_for("unsubscribed", 15, || {
        evil.seen().contains("type='unsubscribed'")
    });

    // §13.3: other IQs get service-unavailable; XEP-0199 ping on the domain is answered.
    r.send(
        "<iq type='get' from='other.test' to='b.test' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
    );
    r.send("<iq type='set' from='carl@other.test/x' to='bob@b.test' id='v1'><query xmlns='jabber:iq:version'/></iq>");
    b.wait_for("the iq answers", 15, || {
        evil.seen().contains("id='p1'") && evil.seen().contains("id='v1'")
    });
    let seen = evil.seen();
    assert!(
        seen.contains("<iq type='result' from='b.test' to='other.test' id='p1'/>"),
        "{seen}"
    );
    let v = &seen[seen
        .find("id='v1'")
        .map(|i| seen[..i].rfind("<iq").unwrap())
        .unwrap()..];
    assert!(
        v.starts_with("<iq type='error'") && v.contains("service-unavailable"),
        "{v}"
    );

    // None of it was stored as mail.
    assert!(b.mailbox("bob@b.test").is_empty());
}

/// What an MTA peer receives (XEP-MTA §7): a domain that announced urn:xmpp:mta:0 gets a
/// `<message/>` with `<mail/>`, its envelope and the message in `<data/>` (base64), and no
/// `<body/>` fallback (§7.5: nobody there would read it).
#[test]
fn mail_stanza_to_an_mta_peer_has_envelope_and_data_but_no_body() {
    use base64::Engine as _;
    let mut a = Xmta::plain("a.test", "127.0.2.133");
    let peer = FakePeer::start_mta("127.0.2.132", "other.test", a.addr);
    set_route(&mut a, "other.test", &peer.addr.to_string());
    a.start();
    a.add_user("alice@a.test");
    let m = message(
        "alice@a.test",
        "bob@other.test",
        "to-an-mta",
        "a line of text",
    );
    a.send("alice@a.test", &["bob@other.test"], &m);
    let stanza = || {
        let seen = peer.seen();
        let at = seen.find("<mail xmlns='urn:xmpp:mta:0'")?;
        let start = seen[..at].rfind("<message")?;
        let end = start + seen[start..].find("</message>")? + "</message>".len();
        Some(seen[start..end].to_string())
    };
    a.wait_for("the mail stanza at the peer", 30, || stanza().is_some());
    let s = stanza().unwrap();
    assert!(
        !s.contains("<body"),
        "no body fallback toward an MTA peer: {s}"
    );
    assert!(s.contains("<mail-from>alice@a.test</mail-from>"), "{s}");
    assert!(s.contains("<rcpt-to>bob@other.test</rcpt-to>"), "{s}");
    assert_eq!(
        attr(&s, "message", "from").as_deref(),
        Some("alice@a.test"),
        "{s}"
    );
    let data_at = s.find("<data").expect("a <data/> element");
    let text_at = data_at + s[data_at..].find('>').unwrap() + 1;
    let text: String = s[text_at..text_at + s[text_at..].find("</data>").unwrap()]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let data = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 data");
    assert!(
        data.ends_with(&m),
        "the message travels unchanged (after the trace headers)"
    );
}
