//! Postfix integration: a socketmap lookup server for `transport_maps` and the main.cf
//! lines to paste (`xmta postfix-config`).
//!
//! Postfix's socketmap protocol (socketmap_table(5)): each request is a netstring
//! `LEN:NAME KEY,` and each reply one netstring `OK value`, `NOTFOUND `, `TEMP reason` or
//! `PERM reason`, on a connection Postfix keeps open. Postfix asks with the full
//! recipient address (`user@b.test`), with `*`, and with sender addresses; a bare domain is
//! taken too. The answer is `OK <transport>` when the domain is one of ours or takes mail
//! over XMPP (see [`crate::delivery::route`]: an XMPP server that announces urn:xmpp:mta:0),
//! `NOTFOUND ` otherwise (Postfix then uses its own default transport), `TEMP` when DNS
//! failed. For a domain with an XMPP server whose discovery answer is not cached, the
//! lookup waits for it up to `[gateway] socketmap_disco_timeout_secs` (Postfix waits ~100 s
//! for a socketmap); without an answer by then it answers from the SRV record (OK), and the
//! queue decides again at delivery time. With `[gateway] plain_xmpp = "xmpp-body"` the SRV
//! record alone decides, as before. A request longer than
//! `[postfix] max_request_bytes`, or not a netstring, closes that connection only.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::server::Core;

#[derive(Debug, thiserror::Error)]
enum NetstringError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed")]
    Closed,
    #[error("idle timeout")]
    Idle,
    #[error("malformed netstring")]
    Malformed,
    #[error("request of {0} bytes is over the limit of {1} (postfix.max_request_bytes)")]
    TooLong(usize, usize),
}

/// Accepts socketmap connections until the process ends.
pub async fn serve(core: Arc<Core>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(core.cfg.get().postfix.max_connections));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "socketmap accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "socketmap: too many connections");
            drop(sock);
            continue;
        };
        let core = core.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match session(&core, sock).await {
                Ok(()) | Err(NetstringError::Closed) => {}
                Err(e) => info!(%peer, error = %e, "socketmap connection closed"),
            }
        });
    }
}

async fn session(core: &Core, sock: TcpStream) -> Result<(), NetstringError> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let idle = Duration::from_secs(core.cfg.get().postfix.idle_timeout_secs);
    loop {
        let req = match tokio::time::timeout(
            idle,
            read_netstring(&mut r, core.cfg.get().postfix.max_request_bytes),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(NetstringError::Idle),
        };
        let answer = answer(core, &req).await;
        debug!(request = %String::from_utf8_lossy(&req), %answer, "socketmap");
        w.write_all(netstring(answer.as_bytes()).as_slice()).await?;
        w.flush().await?;
    }
}

/// Reads one netstring `LEN:DATA,` of at most `max` data bytes.
async fn read_netstring<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, NetstringError> {
    let mut len: usize = 0;
    let mut digits = 0;
    loop {
        let mut b = [0u8; 1];
        if r.read(&mut b).await? == 0 {
            return Err(if digits == 0 {
                NetstringError::Closed
            } else {
                NetstringError::Malformed
            });
        }
        match b[0] {
            d @ b'0'..=b'9' => {
                digits += 1;
                // No leading zeros except "0" itself; at most what the limit allows.
                if digits > 1 && len == 0 {
                    return Err(NetstringError::Malformed);
                }
                len = len * 10 + usize::from(d - b'0');
                if len > max {
                    return Err(NetstringError::TooLong(len, max));
                }
            }
            b':' if digits > 0 => break,
            _ => return Err(NetstringError::Malformed),
        }
    }
    let mut data = vec![0u8; len + 1];
    r.read_exact(&mut data).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            NetstringError::Malformed
        } else {
            NetstringError::Io(e)
        }
    })?;
    if data.pop() != Some(b',') {
        return Err(NetstringError::Malformed);
    }
    Ok(data)
}

fn netstring(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.push(b',');
    out
}

/// The reply to one `NAME KEY` request.
async fn answer(core: &Core, req: &[u8]) -> String {
    let Ok(req) = std::str::from_utf8(req) else {
        return "PERM request is not UTF-8".into();
    };
    let Some((name, key)) = req.split_once(' ') else {
        return "PERM expected \"NAME KEY\"".into();
    };
    if name != core.cfg.get().postfix.map_name {
        return format!("PERM no such map `{name}` here");
    }
    let Some(domain) = key_domain(key) else {
        return "NOTFOUND ".into();
    };
    let Some(transport) = core.cfg.get().postfix_transport() else {
        return "PERM no transport configured".into();
    };
    if core.cfg.get().is_local_domain(&domain) {
        return format!("OK {transport}");
    }
    if core.cfg.get().gateway.plain_xmpp == crate::config::PlainXmpp::XmppBody {
        return match core.delivery.takes_xmpp(&domain).await {
            Ok(true) => format!("OK {transport}"),
            Ok(false) => "NOTFOUND ".into(),
            Err(e) => format!("TEMP {}", e.replace(['\r', '\n', ','], " ")),
        };
    }
    // Only domains that take mail over XMPP go to xmta; plain XMPP domains stay with
    // Postfix's SMTP. Discovery not answered in time: the SRV record decides (OK), and
    // xmta's queue decides again at delivery time.
    let wait = Duration::from_secs(core.cfg.get().gateway.socketmap_disco_timeout_secs);
    match core.delivery.takes_mail_over_xmpp(&domain, wait).await {
        Ok(Some(true)) | Ok(None) => format!("OK {transport}"),
        Ok(Some(false)) => "NOTFOUND ".into(),
        Err(e) => format!("TEMP {}", e.replace(['\r', '\n', ','], " ")),
    }
}

/// The domain a lookup key names: `user@domain`, `@domain` or a bare `domain`, normalized.
/// `*`, empty keys, Postfix's `.domain` parent forms and bad domains name none.
fn key_domain(key: &str) -> Option<String> {
    let d = match key.rsplit_once('@') {
        Some((_, d)) => d,
        None => key,
    };
    if d.is_empty() || d == "*" || d.starts_with('.') {
        return None;
    }
    crate::addr::normalize_domain(d).ok()
}

/// The lines to paste into Postfix's main.cf and master.cf for this configuration.
pub fn config_snippet(cfg: &Config) -> String {
    let transport = cfg
        .postfix_transport()
        .unwrap_or_else(|| "lmtp:inet:127.0.0.1:24".into());
    let domains = cfg.server.domains.join(", ");
    let mut s = String::new();
    s.push_str(&format!(
        "# Postfix settings for xmta ({}), from `xmta postfix-config`.\n",
        cfg.source
    ));
    if cfg.smtp.lmtp.is_none() && cfg.postfix.transport.is_none() {
        s.push_str("# NOTE: [smtp] lmtp is not set; xmta has no LMTP listener for Postfix yet.\n");
    }
    s.push_str("\n# --- main.cf ---\n");
    s.push_str(&format!(
        "# xmta's own domains: Postfix accepts mail for them and hands it to xmta.\nrelay_domains = {domains}\n"
    ));
    match cfg.postfix.socketmap {
        Some(sm) => {
            s.push_str(&format!(
                "# Ask xmta which recipients it takes (its domains and domains reachable over XMPP).\n\
                 transport_maps = socketmap:inet:{}:{}:{}\n",
                sm.ip(),
                sm.port(),
                cfg.postfix.map_name
            ));
        }
        None => {
            s.push_str(
                "# ([postfix] socketmap is not set: only the static transport below is possible.)\n",
            );
        }
    }
    s.push_str(&format!(
        "# Alternative without the socketmap: a static transport table.\n\
         # transport_maps = texthash:/etc/postfix/xmta_transport\n\
         # with /etc/postfix/xmta_transport holding one line per domain, e.g.\n\
         #   {} {transport}\n\
         #   b.example {transport}\n",
        cfg.server
            .domains
            .first()
            .map(String::as_str)
            .unwrap_or("example.org"),
    ));
    s.push_str(&format!(
        "# LMTP toward xmta: one connection may carry many recipients.\n\
         lmtp_destination_recipient_limit = {}\n\
         lmtp_destination_concurrency_limit = 10\n",
        cfg.delivery.max_recipients
    ));
    s.push_str(&format!(
        "# xmta refuses messages over [delivery] max_message_bytes.\nmessage_size_limit = {}\n",
        cfg.delivery.max_message_bytes
    ));
    s.push_str(
        "\n# --- master.cf ---\n\
         # The stock lmtp service carries the transport above (present in Debian's master.cf):\n\
         lmtp      unix  -       -       y       -       -       lmtp\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_domains() {
        assert_eq!(key_domain("user@B.test").as_deref(), Some("b.test"));
        assert_eq!(key_domain("b.test").as_deref(), Some("b.test"));
        assert_eq!(key_domain("@b.test").as_deref(), Some("b.test"));
        assert_eq!(key_domain("\"a@b\"@c.test").as_deref(), Some("c.test"));
        assert_eq!(key_domain("*"), None);
        assert_eq!(key_domain(".b.test"), None);
        assert_eq!(key_domain("user@"), None);
    }

    #[tokio::test]
    async fn netstrings() {
        let mut r: &[u8] = b"16:transport b.test,3:abc,";
        assert_eq!(
            read_netstring(&mut r, 100).await.unwrap(),
            b"transport b.test"
        );
        assert_eq!(read_netstring(&mut r, 100).await.unwrap(), b"abc");
        assert!(matches!(
            read_netstring(&mut r, 100).await,
            Err(NetstringError::Closed)
        ));
        let mut r: &[u8] = b"200:x";
        assert!(matches!(
            read_netstring(&mut r, 100).await,
            Err(NetstringError::TooLong(200, 100))
        ));
        for bad in [&b"3:abcd"[..], b"x:", b"3:ab", b"03:abc,", b":abc,"] {
            let mut r: &[u8] = bad;
            assert!(read_netstring(&mut r, 100).await.is_err(), "{bad:?}");
        }
        assert_eq!(
            netstring(b"OK lmtp:inet:127.0.0.1:24"),
            b"25:OK lmtp:inet:127.0.0.1:24,"
        );
    }
}
