//! One SMTP or LMTP client transaction (RFC 5321, RFC 2033) on mail-send's `SmtpClient`:
//! greeting, EHLO/LHLO, STARTTLS by policy, MAIL, one RCPT per recipient, DATA, and the
//! reply for each recipient (one after DATA in SMTP, one per accepted recipient in LMTP).
//!
//! mail-send's `send()` stops at the first refused recipient; a queue needs every
//! recipient's own answer, so the commands are issued one by one here.

use std::net::SocketAddr;
use std::time::Duration;

use mail_send::SmtpClient;
use smtp_proto::{EXT_START_TLS, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::SmarthostTls;

/// A server's reply to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code (RFC 3463) when the server gave one.
    pub enhanced: Option<String>,
    pub text: String,
}

impl Reply {
    fn from_response(r: &Response<String>) -> Reply {
        let enhanced = (r.esc[0] != 0).then(|| format!("{}.{}.{}", r.esc[0], r.esc[1], r.esc[2]));
        Reply {
            code: r.code,
            enhanced,
            text: r.message.replace(['\r', '\n'], " ").trim().to_string(),
        }
    }

    /// A local failure that did not come from the server (connection, timeout).
    pub fn local_temp(text: impl Into<String>) -> Reply {
        Reply {
            code: 451,
            enhanced: Some("4.4.1".into()),
            text: text.into(),
        }
    }

    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The RFC 3464 status: the enhanced code, else the class from the reply code.
    pub fn status(&self) -> String {
        match &self.enhanced {
            Some(e) => e.clone(),
            None if self.is_permanent() => "5.0.0".into(),
            None if self.is_ok() => "2.0.0".into(),
            None => "4.0.0".into(),
        }
    }

    /// The RFC 3464 Diagnostic-Code value.
    pub fn diagnostic(&self) -> String {
        format!(
            "smtp; {} {}{}",
            self.code,
            self.enhanced
                .as_deref()
                .map(|e| format!("{e} "))
                .unwrap_or_default(),
            self.text
        )
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.diagnostic().trim_start_matches("smtp; "))
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub lmtp: bool,
    pub tls: SmarthostTls,
    pub allow_invalid_certs: bool,
    /// Per command (and for the message data with its final reply).
    pub timeout: Duration,
    /// Our name in EHLO/LHLO.
    pub helo: String,
}

/// Runs one transaction. `Ok` has one reply per recipient (in order); `Err` means no
/// recipient got an answer (connection, greeting, EHLO or TLS failed): all are temporary.
pub async fn transaction(
    ep: &Endpoint,
    sender: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<Vec<(String, Reply)>, String> {
    let addr = resolve(ep).await?;
    let mut client = SmtpClient::connect(addr, ep.timeout)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let greeting = tokio::time::timeout(ep.timeout, client.read())
        .await
        .map_err(|_| format!("{addr} sent no greeting in time"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    if !(200..300).contains(&greeting.code) {
        return Err(format!(
            "{addr} greeted with {}",
            Reply::from_response(&greeting)
        ));
    }
    let caps = hello(&mut client, ep).await?;
    let wants_tls = match ep.tls {
        SmarthostTls::Off => false,
        SmarthostTls::Optional => caps.has_capability(EXT_START_TLS),
        SmarthostTls::Required => {
            if !caps.has_capability(EXT_START_TLS) {
                return Err(format!("{addr} does not offer STARTTLS (required)"));
            }
            true
        }
    };
    if !wants_tls {
        let r = envelope(&mut client, ep, sender, rcpts, message).await;
        let _ = client.quit().await;
        return r;
    }
    let connector = mail_send::smtp::tls::build_tls_connector(ep.allow_invalid_certs)
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let mut client = client
        .start_tls(&connector, &ep.host)
        .await
        .map_err(|e| format!("STARTTLS with {addr}: {e}"))?;
    hello(&mut client, ep).await?;
    let r = envelope(&mut client, ep, sender, rcpts, message).await;
    let _ = client.quit().await;
    r
}

async fn resolve(ep: &Endpoint) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", ep.host))?;
    addrs
        .next()
        .ok_or_else(|| format!("{} has no address", ep.host))
}

async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    ep: &Endpoint,
) -> Result<smtp_proto::EhloResponse<String>, String> {
    let r = if ep.lmtp {
        client.lhlo(&ep.helo).await
    } else {
        client.ehlo(&ep.helo).await
    };
    r.map_err(|e| format!("{}:{} refused {}: {e}", ep.host, ep.port, hello_word(ep)))
}

fn hello_word(ep: &Endpoint) -> &'static str {
    if ep.lmtp { "LHLO" } else { "EHLO" }
}

async fn command<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    line: String,
) -> Result<Reply, String> {
    client
        .cmd(line.as_bytes())
        .await
        .map(|r| Reply::from_response(&r))
        .map_err(|e| e.to_string())
}

/// MAIL, RCPTs, DATA. A failure after some recipients were answered still yields an
/// answer for every recipient (temporary for those without one).
async fn envelope<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    ep: &Endpoint,
    sender: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<Vec<(String, Reply)>, String> {
    let all = |r: &Reply| rcpts.iter().map(|a| (a.clone(), r.clone())).collect();
    let mail = command(client, format!("MAIL FROM:<{sender}>\r\n")).await?;
    if !mail.is_ok() {
        return Ok(all(&mail));
    }
    let mut out: Vec<(String, Reply)> = Vec::with_capacity(rcpts.len());
    let mut accepted = Vec::new();
    for (i, r) in rcpts.iter().enumerate() {
        match command(client, format!("RCPT TO:<{r}>\r\n")).await {
            Ok(reply) => {
                if reply.is_ok() {
                    accepted.push(i);
                }
                out.push((r.clone(), reply));
            }
            Err(e) => {
                for rest in &rcpts[i..] {
                    out.push((rest.clone(), Reply::local_temp(e.clone())));
                }
                for i in accepted {
                    out[i].1 = Reply::local_temp(e.clone());
                }
                return Ok(out);
            }
        }
    }
    if accepted.is_empty() {
        let _ = command(client, "RSET\r\n".into()).await;
        return Ok(out);
    }
    let set_accepted = |out: &mut Vec<(String, Reply)>, replies: &[Reply]| {
        for (k, &i) in accepted.iter().enumerate() {
            let r = replies.get(k).or(replies.last()).cloned();
            out[i].1 = r.unwrap_or_else(|| Reply::local_temp("no reply"));
        }
    };
    let data = match command(client, "DATA\r\n".into()).await {
        Ok(r) => r,
        Err(e) => {
            set_accepted(&mut out, &[Reply::local_temp(e)]);
            return Ok(out);
        }
    };
    if data.code != 354 {
        set_accepted(&mut out, &[data]);
        return Ok(out);
    }
    // write_message ends the data with CRLF "." CRLF itself: the message's own last line
    // end must not be sent twice.
    let body = message.strip_suffix(b"\r\n").unwrap_or(message);
    let n = if ep.lmtp { accepted.len() } else { 1 };
    let finish = async {
        client
            .write_message(body)
            .await
            .map_err(|e| e.to_string())?;
        client.read_many(n).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(ep.timeout, finish).await {
        Ok(Ok(replies)) => {
            let replies: Vec<Reply> = replies.iter().map(Reply::from_response).collect();
            set_accepted(&mut out, &replies);
        }
        Ok(Err(e)) => set_accepted(&mut out, &[Reply::local_temp(e)]),
        Err(_) => set_accepted(
            &mut out,
            &[Reply::local_temp(
                "timeout waiting for the reply to the data",
            )],
        ),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes() {
        let r = Reply {
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "no such user".into(),
        };
        assert!(r.is_permanent() && !r.is_ok());
        assert_eq!(r.status(), "5.1.1");
        assert_eq!(r.diagnostic(), "smtp; 550 5.1.1 no such user");
        let t = Reply {
            code: 451,
            enhanced: None,
            text: "later".into(),
        };
        assert_eq!(t.status(), "4.0.0");
        assert!(!t.is_permanent());
    }
}
