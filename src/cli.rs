//! The command line: parses arguments and runs each command, through the running server's
//! admin socket when there is one, else directly on the store.

use std::io::{Read, Write};
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Parser, Subcommand};

use crate::admin::{Request, Response};
use crate::config::Config;
use crate::store::{Store, StoreError};

pub const DEFAULT_CONFIG_PATH: &str = "config/xmta.toml";

#[derive(Parser, Debug)]
#[command(name = "xmta", version, about = "An XMPP mail transfer agent")]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Manage users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Send a message (RFC 5322 on stdin), like `sendmail -f`. Exits 0 only once the
    /// server holds it durably. LF line ends are converted to CRLF unless the first line
    /// already ends in CRLF (then the bytes are taken unchanged).
    Send {
        #[arg(long = "from")]
        from: String,
        #[arg(required = true)]
        rcpts: Vec<String>,
    },
    /// Read a user's mailbox.
    Mailbox {
        #[command(subcommand)]
        cmd: MailboxCmd,
    },
    /// Inspect the outbound queue.
    Queue {
        #[command(subcommand)]
        cmd: QueueCmd,
    },
    /// Print the Postfix main.cf/master.cf lines for this configuration.
    PostfixConfig,
    /// Registered servers (XEP-MTA §22): tools for running a registry zone.
    Registry {
        #[command(subcommand)]
        cmd: RegistryCmd,
    },
    /// Print the DNS records DOMAIN needs (zone-file syntax): SRV, registry entry, MX/SPF.
    DnsRecords { domain: String },
    /// Check config, data dir, certificates, DNS, listeners; one PASS/WARN/FAIL line each.
    /// Exit status 0 when nothing FAILed (WARNs included), 2 when something did.
    Check,
    /// Import existing mail into a user's folder (flags and dates kept; re-runs skip what
    /// is already there).
    Import {
        #[command(subcommand)]
        cmd: ImportCmd,
    },
    /// Write a consistent snapshot of the store to FILE (also while serving).
    Backup { file: PathBuf },
    /// Put a backup in place as the store of data_dir (the server must be stopped).
    Restore {
        file: PathBuf,
        /// Replace an existing store.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RegistryCmd {
    /// Print a BIND zone file from lines of `domain [ip] [registered|provisional|suspended]
    /// [reason...]` (FILE, or `-` for stdin), with the RFC 5782 test entries.
    Zonefile {
        file: PathBuf,
        /// The zone (default: `[registry] zone` of the config).
        #[arg(long)]
        zone: Option<String>,
        /// The SOA serial (default: the current Unix time).
        #[arg(long)]
        serial: Option<u32>,
    },
}

fn run_registry(cfg: &Config, cmd: RegistryCmd) -> Result<(), String> {
    match cmd {
        RegistryCmd::Zonefile { file, zone, serial } => {
            let zone = zone
                .or_else(|| cfg.registry.zone.clone())
                .ok_or("no zone: give --zone or set [registry] zone")?;
            let input = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| format!("stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?
            };
            let serial = serial.unwrap_or(crate::now() as u32);
            let out = crate::registry::zonefile(&zone, &input, serial)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            std::io::stdout()
                .write_all(out.as_bytes())
                .map_err(|e| format!("stdout: {e}"))
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ImportCmd {
    /// A Maildir (with cur/ and new/).
    Maildir {
        path: PathBuf,
        address: String,
        #[arg(long, default_value = "INBOX")]
        folder: String,
    },
    /// An mbox file (mboxo/mboxrd).
    Mbox {
        path: PathBuf,
        address: String,
        #[arg(long, default_value = "INBOX")]
        folder: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user.
    Add {
        address: String,
        /// Read the password from stdin (first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Delete a user and their mail.
    Del { address: String },
}

#[derive(Subcommand, Debug)]
pub enum MailboxCmd {
    /// One line per message: uid, size, date, from, subject.
    List { address: String },
    /// The stored bytes of one message.
    Show { address: String, uid: u32 },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// One line per queued recipient.
    List,
    /// Retry every queued item now instead of at its next scheduled attempt (the server
    /// must be running), e.g. after a peer that was down is back.
    Flush,
}

/// Runs the command; the error is printed by main with a non-zero exit.
pub fn run(cli: Cli) -> Result<(), String> {
    let is_default = cli.config.as_os_str() == DEFAULT_CONFIG_PATH;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    if let Command::Check = cli.command {
        // Before loading the config: a config that does not load is one of its findings.
        let lines = rt.block_on(crate::ops::check::run(&cli.config, is_default, |l| {
            println!("{l}");
        }));
        let _ = std::io::stdout().flush();
        std::process::exit(crate::ops::check::exit_code(&lines));
    }
    let cfg = Config::load(&cli.config, is_default).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve => {
            let reload = init_logging(&cfg);
            rt.block_on(crate::server::serve_with(
                cfg,
                cli.config.clone(),
                is_default,
                reload,
            ))
            .map_err(|e| e.to_string())
        }
        Command::DnsRecords { domain } => {
            print!("{}", crate::ops::dns_records::render(&cfg, &domain)?);
            Ok(())
        }
        Command::Import { cmd } => {
            let (format, path, address, folder) = match cmd {
                ImportCmd::Maildir {
                    path,
                    address,
                    folder,
                } => (crate::ops::import::Format::Maildir, path, address, folder),
                ImportCmd::Mbox {
                    path,
                    address,
                    folder,
                } => (crate::ops::import::Format::Mbox, path, address, folder),
            };
            let line = rt.block_on(crate::ops::import::run(
                &cfg, format, &path, &address, &folder,
            ))?;
            println!("{line}");
            Ok(())
        }
        Command::Backup { file } => {
            println!(
                "{}",
                rt.block_on(crate::ops::backup::run_backup(&cfg, &file))?
            );
            Ok(())
        }
        Command::Restore { file, force } => {
            println!(
                "{}",
                rt.block_on(crate::ops::backup::run_restore(&cfg, &file, force))?
            );
            Ok(())
        }
        Command::Registry { cmd } => run_registry(&cfg, cmd),
        Command::PostfixConfig => {
            print!("{}", crate::postfix::config_snippet(&cfg));
            Ok(())
        }
        cmd => {
            let req = request_for(cmd)?;
            let resp = rt.block_on(dispatch(&cfg, req))?;
            print_response(resp)
        }
    }
}

/// Changes the log filter of the running process (SIGHUP reload).
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Sets up logging as `[log]` says (`format` human or json); returns the handle that
/// changes the filter later. RUST_LOG, when set, overrides `log.level`.
fn init_logging(cfg: &Config) -> LogReload {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| cfg.log.level.clone());
    let (filter, handle) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new(filter));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match cfg.log.format {
        crate::config::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        crate::config::LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
    };
    Box::new(move |level: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

fn request_for(cmd: Command) -> Result<Request, String> {
    Ok(match cmd {
        Command::Serve
        | Command::PostfixConfig
        | Command::Registry { .. }
        | Command::DnsRecords { .. }
        | Command::Check
        | Command::Import { .. }
        | Command::Backup { .. }
        | Command::Restore { .. } => {
            return Err("internal: this command has no admin request".into());
        }
        Command::User {
            cmd:
                UserCmd::Add {
                    address,
                    password_stdin,
                },
        } => {
            if !password_stdin {
                return Err("give the password on stdin with --password-stdin".into());
            }
            let mut pw = String::new();
            std::io::stdin()
                .read_line(&mut pw)
                .map_err(|e| format!("reading the password: {e}"))?;
            let pw = pw.trim_end_matches(['\r', '\n']);
            if pw.is_empty() {
                return Err("empty password".into());
            }
            Request::UserAdd {
                address,
                password_hash: hash_password(pw)?,
            }
        }
        Command::User { cmd: UserCmd::List } => Request::UserList,
        Command::User {
            cmd: UserCmd::Del { address },
        } => Request::UserDel { address },
        Command::Send { from, rcpts } => {
            let mut message = Vec::new();
            std::io::stdin()
                .read_to_end(&mut message)
                .map_err(|e| format!("reading the message: {e}"))?;
            Request::Send {
                from,
                rcpts,
                message_b64: B64.encode(normalize_crlf(&message)),
            }
        }
        Command::Mailbox {
            cmd: MailboxCmd::List { address },
        } => Request::MailboxList { address },
        Command::Mailbox {
            cmd: MailboxCmd::Show { address, uid },
        } => Request::MailboxShow { address, uid },
        Command::Queue {
            cmd: QueueCmd::List,
        } => Request::QueueList,
        Command::Queue {
            cmd: QueueCmd::Flush,
        } => Request::QueueFlush,
    })
}

/// Messages are stored with CRLF line ends (RFC 5322). A message typed or piped from Unix
/// tools (LF line ends) is converted; one whose first line already ends in CRLF is taken as
/// it is, byte for byte, so binary (8-bit or `binary` transfer-encoded) parts survive.
pub fn normalize_crlf(m: &[u8]) -> Vec<u8> {
    if let Some(p) = m.iter().position(|&b| b == b'\n')
        && p > 0
        && m[p - 1] == b'\r'
    {
        return m.to_vec();
    }
    let mut out = Vec::with_capacity(m.len() + m.len() / 32);
    let mut prev = 0u8;
    for &b in m {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

pub fn hash_password(pw: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let raw: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&raw).map_err(|e| format!("salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

async fn dispatch(cfg: &Config, req: Request) -> Result<Response, String> {
    let sock = cfg.admin_socket();
    if let Some(resp) = crate::admin::request(&sock, &req).await? {
        return Ok(resp);
    }
    // No server answers: work on the store directly.
    std::fs::create_dir_all(&cfg.server.data_dir)
        .map_err(|e| format!("data dir {}: {e}", cfg.server.data_dir.display()))?;
    let path = cfg.store_path();
    let store = match Store::open(&path) {
        Ok(s) => s,
        Err(StoreError::Locked(_)) => {
            return Err(format!(
                "{} is in use by a running xmta, but its admin socket {} does not answer",
                path.display(),
                sock.display()
            ));
        }
        Err(e) => return Err(format!("store {}: {e}", path.display())),
    };
    Ok(crate::admin::execute(cfg, &store, None, req).await)
}

fn print_response(resp: Response) -> Result<(), String> {
    if !resp.ok {
        return Err(resp.error.unwrap_or_else(|| "failed".into()));
    }
    let mut out = std::io::stdout().lock();
    for l in &resp.lines {
        writeln!(out, "{l}").map_err(|e| e.to_string())?;
    }
    if let Some(d) = resp.data_b64 {
        let bytes = B64.decode(d.as_bytes()).map_err(|e| e.to_string())?;
        out.write_all(&bytes).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}
