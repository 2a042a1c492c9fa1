//! SPF (RFC 7208), DKIM (RFC 6376) and DMARC (RFC 7489) verification of inbound MX mail
//! with mail-auth, recorded in an Authentication-Results header (RFC 8601) whose
//! authserv-id is `[smtp] hostname`. DNS goes to `[dns] nameservers` when set, else to the
//! system resolver. All look-ups of one message are bounded by `[smtp] verify_timeout_secs`;
//! on time-out the header says `none` with a comment, and the message is still accepted
//! (DMARC enforcement needs a result, not a guess).

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult,
};

use crate::config::Config;

/// The outcome for one message.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `name=result` per method, e.g. ("spf", "pass"), for logs and tests.
    pub results: Vec<(&'static str, String)>,
    /// The text after "Authentication-Results: " up to (not including) the CRLF.
    pub value: String,
    /// DMARC failed and the domain's policy is p=reject.
    pub dmarc_reject: bool,
}

pub struct Verifier {
    auth: MessageAuthenticator,
    hostname: String,
    timeout: Duration,
}

impl Verifier {
    pub fn new(cfg: &Config) -> Result<Verifier, String> {
        let mut opts = ResolverOpts::default();
        opts.timeout = Duration::from_secs(3);
        opts.attempts = 2;
        let auth = if cfg.dns.nameservers.is_empty() {
            let (conf, _) = hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| format!("system resolver: {e}"))?;
            MessageAuthenticator::new(conf, opts).map_err(|e| format!("resolver set-up: {e}"))?
        } else {
            let servers = cfg
                .dns
                .nameservers
                .iter()
                .map(|sa| {
                    let mut ns = NameServerConfig::udp_and_tcp(sa.ip());
                    for c in &mut ns.connections {
                        c.port = sa.port();
                    }
                    ns
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), opts)
                .map_err(|e| format!("resolver set-up: {e}"))?
        };
        Ok(Verifier {
            auth,
            hostname: cfg.smtp_hostname().to_string(),
            timeout: Duration::from_secs(cfg.smtp.verify_timeout_secs),
        })
    }

    /// Verifies a message received from `ip` after `helo`, with envelope sender
    /// `mail_from` ("" for the null sender).
    pub async fn verify(&self, ip: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> Verdict {
        match tokio::time::timeout(
            self.timeout,
            self.verify_inner(ip, helo, mail_from, message),
        )
        .await
        {
            Ok(v) => v,
            Err(_) => Verdict {
                results: Vec::new(),
                value: format!("{}; none (verification timed out)", self.hostname),
                dmarc_reject: false,
            },
        }
    }

    async fn verify_inner(
        &self,
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> Verdict {
        let host = self.hostname.as_str();
        let spf = if mail_from.is_empty() {
            self.auth
                .verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
                .await
        } else {
            self.auth
                .verify_spf(SpfParameters::verify_mail_from(ip, helo, host, mail_from))
                .await
        };
        let mut results = vec![("spf", spf_name(&spf.result()).to_string())];
        let Some(msg) = AuthenticatedMessage::parse(message) else {
            let ar = AuthenticationResults::new(host)
                .with_spf_mailfrom_result(&spf, ip, mail_from, helo);
            return Verdict {
                results,
                value: format!("{ar} (message headers not parsable)"),
                dmarc_reject: false,
            };
        };
        let dkim = self.auth.verify_dkim(&msg).await;
        let mail_from_domain = mail_from.rsplit_once('@').map(|(_, d)| d).unwrap_or(helo);
        let dmarc = self
            .auth
            .verify_dmarc(DmarcParameters::new(&msg, &dkim, mail_from_domain, &spf))
            .await;
        if dkim.is_empty() {
            results.push(("dkim", "none".into()));
        }
        for d in &dkim {
            results.push(("dkim", dkim_name(d.result()).to_string()));
        }
        let dmarc_result = dmarc.result();
        results.push((
            "dmarc",
            match &dmarc_result {
                DmarcResult::Pass => "pass",
                DmarcResult::Fail(_) => "fail",
                DmarcResult::TempError(_) => "temperror",
                DmarcResult::PermError(_) => "permerror",
                DmarcResult::None => "none",
            }
            .to_string(),
        ));
        let mut ar = AuthenticationResults::new(host);
        if dkim.is_empty() {
            // mail-auth writes nothing for an unsigned message; RFC 8601 §2.7.1 has dkim=none.
            ar = ar.with_spf_mailfrom_result(&spf, ip, mail_from, helo);
        } else {
            ar = ar
                .with_dkim_results(&dkim, msg.from())
                .with_spf_mailfrom_result(&spf, ip, mail_from, helo);
        }
        let ar = ar.with_dmarc_result(&dmarc);
        let mut value = ar.to_string();
        if dkim.is_empty() {
            value = value.replacen(&format!("{host};"), &format!("{host};\r\n\tdkim=none;"), 1);
        }
        Verdict {
            results,
            value,
            dmarc_reject: matches!(dmarc_result, DmarcResult::Fail(_))
                && dmarc.policy() == Policy::Reject,
        }
    }
}

fn spf_name(r: &SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_name(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// Removes Authentication-Results fields that claim our authserv-id from a message coming
/// in from outside (RFC 8601 §5): only this server writes those, and a client could
/// otherwise forge a `dkim=pass` for the reader. Returns the message and how many fields
/// were removed; other bytes are untouched.
pub fn strip_own_results(message: Vec<u8>, authserv_id: &str) -> (Vec<u8>, usize) {
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    let mut current: Option<usize> = None;
    let mut removed = Vec::new();
    while i < message.len() {
        let end = message[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| i + p + 1)
            .unwrap_or(message.len());
        let line = &message[i..end];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            if let Some(start) = current.take() {
                fields.push((start, i));
            }
            if line == b"\r\n" || line == b"\n" {
                break;
            }
            current = Some(i);
        }
        i = end;
    }
    if let Some(start) = current {
        fields.push((start, i));
    }
    for (start, end) in fields {
        let field = &message[start..end];
        let Some(colon) = field.iter().position(|&b| b == b':') else {
            continue;
        };
        if !field[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"authentication-results")
        {
            continue;
        }
        let value = field[colon + 1..].trim_ascii_start();
        let id_end = value
            .iter()
            .position(|&b| b == b';' || b.is_ascii_whitespace())
            .unwrap_or(value.len());
        if value[..id_end].eq_ignore_ascii_case(authserv_id.as_bytes()) {
            removed.push((start, end));
        }
    }
    if removed.is_empty() {
        return (message, 0);
    }
    let n = removed.len();
    let mut out = Vec::with_capacity(message.len());
    let mut at = 0;
    for (start, end) in removed {
        out.extend_from_slice(&message[at..start]);
        at = end;
    }
    out.extend_from_slice(&message[at..]);
    (out, n)
}

#[cfg(test)]
mod tests {
    use super::strip_own_results;

    #[test]
    fn strips_only_our_results_in_the_header() {
        let m = b"Authentication-Results: MX.Example; dkim=pass\r\n header.d=x\r\nAuthentication-Results: other.example; spf=pass\r\nSubject: s\r\nauthentication-results:mx.example;none\r\n\r\nAuthentication-Results: mx.example; body\r\n".to_vec();
        let (out, n) = strip_own_results(m, "mx.example");
        assert_eq!(n, 2);
        assert_eq!(
            out,
            b"Authentication-Results: other.example; spf=pass\r\nSubject: s\r\n\r\nAuthentication-Results: mx.example; body\r\n"
        );
        let m = b"Subject: s\r\n\r\nb\r\n".to_vec();
        assert_eq!(strip_own_results(m.clone(), "mx.example"), (m, 0));
    }
}
