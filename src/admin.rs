//! The local admin interface: the command line's requests, executed against the store
//! either by the running server (over a Unix socket in the data dir: the server owns the
//! store file while it runs) or, when no server runs, by the command itself.
//!
//! Wire format: one JSON request per line, one JSON response per line.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::addr::MailAddress;
use crate::config::Config;
use crate::delivery::Delivery;
use crate::server::Core;
use crate::store::{Op, OpResult, RcptStatus, Store};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    UserAdd {
        address: String,
        password_hash: String,
    },
    UserDel {
        address: String,
    },
    UserList,
    Send {
        from: String,
        rcpts: Vec<String>,
        message_b64: String,
    },
    MailboxList {
        address: String,
    },
    MailboxShow {
        address: String,
        uid: u32,
    },
    QueueList,
    /// Makes every queued item due now (the running server only).
    QueueFlush,
    /// Is a server there? Answers with its version and pid.
    Ping,
    /// The SHA-256 digests of the messages in a folder (`xmta import` skips those).
    ImportDigests {
        address: String,
        folder: String,
    },
    /// One batch of `xmta import`, stored in one transaction.
    Import {
        address: String,
        folder: String,
        messages: Vec<crate::ops::import::ImportMessage>,
    },
    /// Write a consistent snapshot of the store to `path` (a file on the server's host).
    Backup {
        path: std::path::PathBuf,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Lines to print on stdout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    /// Raw bytes to write on stdout (base64 on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl Response {
    fn ok(lines: Vec<String>) -> Response {
        Response {
            ok: true,
            lines,
            ..Default::default()
        }
    }
    fn err(e: impl ToString) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Default::default()
        }
    }
}

/// Largest request line accepted (a message to send travels inside it, base64-encoded).
const MAX_REQUEST: usize = 200 * 1024 * 1024;

fn local_address(cfg: &Config, s: &str) -> Result<String, String> {
    let a = MailAddress::parse(s).map_err(|e| format!("'{s}': {e}"))?;
    if !cfg.is_local_domain(a.domain()) {
        return Err(format!(
            "{} is not a domain this server serves ({})",
            a.domain(),
            cfg.server.domains.join(", ")
        ));
    }
    Ok(a.canonical())
}

/// Runs one request against `store`; `delivery` is there when the server runs.
pub async fn execute(
    cfg: &Config,
    store: &Store,
    delivery: Option<&Arc<Delivery>>,
    req: Request,
) -> Response {
    match req {
        Request::UserAdd {
            address,
            password_hash,
        } => {
            let address = match local_address(cfg, &address) {
                Ok(a) => a,
                Err(e) => return Response::err(e),
            };
            match store
                .apply(vec![Op::AddUser {
                    address: address.clone(),
                    password_hash,
                }])
                .await
            {
                Ok(r) => match r.first() {
                    Some(OpResult::UserAdded(true)) => {
                        Response::ok(vec![format!("added {address}")])
                    }
                    _ => Response::err(format!("{address} already exists")),
                },
                Err(e) => Response::err(e),
            }
        }
        Request::UserDel { address } => {
            let address = match local_address(cfg, &address) {
                Ok(a) => a,
                Err(e) => return Response::err(e),
            };
            match store
                .apply(vec![Op::DeleteUser {
                    address: address.clone(),
                }])
                .await
            {
                Ok(r) => match r.first() {
                    Some(OpResult::UserDeleted(true)) => {
                        Response::ok(vec![format!("deleted {address}")])
                    }
                    _ => Response::err(format!("no such user: {address}")),
                },
                Err(e) => Response::err(e),
            }
        }
        Request::UserList => match store.users() {
            Ok(u) => Response::ok(u),
            Err(e) => Response::err(e),
        },
        Request::Send {
            from,
            rcpts,
            message_b64,
        } => {
            let message = match B64.decode(message_b64.as_bytes()) {
                Ok(m) => m,
                Err(e) => return Response::err(format!("bad message encoding: {e}")),
            };
            match crate::delivery::submit::submit(cfg, store, &from, &rcpts, message).await {
                Ok(acc) => {
                    if let (Some(id), Some(d)) = (&acc.queue_id, delivery) {
                        d.schedule(id, crate::now());
                    }
                    let mut lines = Vec::new();
                    if !acc.local.is_empty() {
                        lines.push(format!("stored for {}", acc.local.join(", ")));
                    }
                    if let Some(id) = acc.queue_id {
                        lines.push(format!("queued {id} for {}", acc.remote.join(", ")));
                    }
                    Response::ok(lines)
                }
                Err(e) => Response::err(e),
            }
        }
        Request::MailboxList { address } => {
            let address = match local_address(cfg, &address) {
                Ok(a) => a,
                Err(e) => return Response::err(e),
            };
            match store.user(&address) {
                Ok(Some(_)) => {}
                Ok(None) => return Response::err(format!("no such user: {address}")),
                Err(e) => return Response::err(e),
            }
            let metas = match store.messages(&address, "INBOX") {
                Ok(m) => m,
                Err(e) => return Response::err(e),
            };
            let mut lines = Vec::new();
            for m in metas {
                let (from, subject) = match store.message_body(&address, "INBOX", m.uid) {
                    Ok(Some(body)) => summary(&body),
                    _ => (String::new(), String::new()),
                };
                lines.push(format!(
                    "{}\t{}\t{}\t{}\t{}",
                    m.uid,
                    m.size,
                    crate::rfc5322_date(m.internal_date),
                    from,
                    subject
                ));
            }
            Response::ok(lines)
        }
        Request::MailboxShow { address, uid } => {
            let address = match local_address(cfg, &address) {
                Ok(a) => a,
                Err(e) => return Response::err(e),
            };
            match store.message_body(&address, "INBOX", uid) {
                Ok(Some(b)) => Response {
                    ok: true,
                    data_b64: Some(B64.encode(b)),
                    ..Default::default()
                },
                Ok(None) => Response::err(format!("{address} has no message with uid {uid}")),
                Err(e) => Response::err(e),
            }
        }
        Request::QueueFlush => match delivery {
            Some(d) => Response::ok(vec![format!("{} queued item(s) made due now", d.flush())]),
            None => Response::err(
                "the queue can only be flushed while the server runs (start `xmta serve`; at start it retries what is due anyway)",
            ),
        },
        Request::Ping => Response::ok(vec![format!(
            "xmta {} pid {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        )]),
        Request::ImportDigests { address, folder } => {
            let address = match local_address(cfg, &address) {
                Ok(a) => a,
                Err(e) => return Response::err(e),
            };
            match crate::ops::import::folder_digests(store, &address, &folder) {
                Ok(d) => Response::ok(d),
                Err(e) => Response::err(e),
            }
        }
        Request::Import {
            address,
            folder,
            messages,
        } => {
            let address = match local_address(cfg, &address) {
                Ok(a) => a,
                Err(e) => return Response::err(e),
            };
            match crate::ops::import::apply_batch(store, &address, &folder, messages).await {
                Ok(r) => Response::ok(vec![format!(
                    "stored {} duplicates {}",
                    r.stored, r.duplicates
                )]),
                Err(e) => Response::err(e),
            }
        }
        Request::Backup { path } => match crate::ops::backup::backup(store.clone(), path).await {
            Ok(line) => Response::ok(vec![line]),
            Err(e) => Response::err(e),
        },
        Request::QueueList => match store.queue() {
            Ok(items) => {
                let mut lines = Vec::new();
                for it in items {
                    for r in &it.recipients {
                        let status = match &r.status {
                            RcptStatus::Pending => format!(
                                "pending ({})",
                                r.last_error
                                    .clone()
                                    .unwrap_or_else(|| "not tried yet".into())
                            ),
                            RcptStatus::Delivered { .. } => "delivered".into(),
                            RcptStatus::Failed { code, text } => format!("failed {code} {text}"),
                        };
                        let sender = if it.sender.is_empty() {
                            "<>".to_string()
                        } else {
                            it.sender.clone()
                        };
                        lines.push(format!(
                            "{}\t{}\t{}\t{}\tattempts={}\tnext={}\t{}",
                            it.id,
                            it.size,
                            sender,
                            r.address,
                            it.attempts,
                            crate::rfc5322_date(it.next_attempt),
                            status
                        ));
                    }
                }
                Response::ok(lines)
            }
            Err(e) => Response::err(e),
        },
    }
}

fn summary(body: &[u8]) -> (String, String) {
    let Some(m) = mail_parser::MessageParser::default().parse_headers(body) else {
        return (String::new(), String::new());
    };
    let from = m
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or_default()
        .to_string();
    let subject = m
        .subject()
        .unwrap_or_default()
        .replace(['\t', '\r', '\n'], " ");
    (from, subject)
}

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a server that died; the store lock already proved none runs.
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(core: Arc<Core>, listener: UnixListener) {
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let core = core.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(core, sock).await {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// Requests being executed (graceful shutdown waits for them).
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn in_flight() -> usize {
    IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn handle(core: Arc<Core>, sock: UnixStream) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut lines = BufReader::new(r.take(MAX_REQUEST as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        let _busy = InFlight::start();
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => execute(&core.cfg.get(), &core.store, Some(&core.delivery), req).await,
            Err(e) => Response::err(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to a running server. `Ok(None)`: no server answers on `path`.
pub async fn request(path: &Path, req: &Request) -> Result<Option<Response>, String> {
    let mut sock = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    sock.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("admin socket: {e}"))?;
    let mut reader = BufReader::new(sock);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .await
        .map_err(|e| format!("admin socket: {e}"))?;
    if answer.is_empty() {
        return Err("the server closed the admin connection without answering".into());
    }
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| format!("bad answer from the server: {e}"))
}
