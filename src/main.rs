//! The `corecast` binary: parse flags, load the configuration, run a node
//! (or mint a token, or check and print the configuration: `corecast config
//! check|default`), and report errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use corecast::auth::{TokenKeys, parse_ttl, random_secret};
use corecast::config::{Config, ConfigError};

/// corecast: a WebSocket push gateway. With no flags and no file, runs a
/// dev node on 127.0.0.1:8080 (WebSocket) and 127.0.0.1:8081 (HTTP API).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    node: NodeFlags,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Flags that override the file and the `CORECAST_*` environment.
#[derive(Args, Debug)]
struct NodeFlags {
    /// TOML configuration file (every field optional).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// WebSocket listen address (CORECAST_WS_LISTEN).
    #[arg(long)]
    ws_listen: Option<std::net::SocketAddr>,
    /// HTTP API listen address (CORECAST_HTTP_LISTEN).
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// Executors, one per core; 0 = all online cores (CORECAST_CORES).
    #[arg(long)]
    cores: Option<usize>,
    /// Connection cap of this node (CORECAST_MAX_CONNECTIONS).
    #[arg(long)]
    max_connections: Option<usize>,
    /// This node's id in the cluster (CORECAST_NODE_ID).
    #[arg(long)]
    node_id: Option<String>,
    /// ZeroMQ PUB bind address, e.g. tcp://127.0.0.1:7000 (CORECAST_MESH_LISTEN).
    #[arg(long)]
    mesh_listen: Option<String>,
    /// Peers' PUB addresses, comma-separated (CORECAST_MESH_PEERS).
    #[arg(long, value_delimiter = ',')]
    mesh_peers: Option<Vec<String>>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mint a client token signed with the configured secret.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        uid: String,
        /// Rooms joined at connect (and allowed for `join`), comma-separated.
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// Device label shown in presence.
        #[arg(long)]
        device: Option<String>,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Check a config file, or print every key with its default.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Check the file of --config (without the environment): exit 0 and
    /// `ok`, or exit 1 and every error, each with its key.
    Check,
    /// Print every key with its default and a comment, as TOML.
    Default,
}

/// `corecast config ...`: exit 0, 1 for a file with errors, 2 for a usage
/// error.
fn config_command(action: &ConfigAction, path: Option<&std::path::Path>) -> ExitCode {
    match action {
        ConfigAction::Default => {
            print!("{}", Config::default_toml());
            ExitCode::SUCCESS
        }
        ConfigAction::Check => {
            let Some(path) = path else {
                eprintln!("corecast: config check needs --config FILE");
                return ExitCode::from(2);
            };
            match Config::check_file(path) {
                Ok(_) => {
                    println!("ok");
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in &errors {
                        eprintln!("{}: {e}", path.display());
                    }
                    eprintln!("{}: {} error(s)", path.display(), errors.len());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The config of the file, the environment and the flags; a missing secret
/// or key is made up for this run (and marked so in `config.auth`).
fn load(flags: &NodeFlags) -> Result<Config, ConfigError> {
    let mut config = match &flags.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    config.apply_env(|name| std::env::var(name).ok())?;
    if let Some(v) = flags.ws_listen {
        config.ws.listen = v;
    }
    if let Some(v) = flags.http_listen {
        config.http.listen = v;
    }
    if let Some(v) = flags.cores {
        config.node.cores = v;
    }
    if let Some(v) = flags.max_connections {
        config.limits.max_connections = v;
    }
    if let Some(v) = &flags.node_id {
        config.cluster.node_id = v.clone();
    }
    if let Some(v) = &flags.mesh_listen {
        config.cluster.mesh_listen = v.clone();
    }
    if let Some(v) = &flags.mesh_peers {
        config.cluster.mesh_peers = v.clone();
    }
    config.validate()?;
    if config.auth.jwt_secret.is_empty() {
        config.auth.jwt_secret = random_secret();
        config.auth.jwt_secret_generated = true;
    }
    if config.auth.api_keys.is_empty() {
        config.auth.api_keys = vec![random_secret()];
        config.auth.api_key_generated = true;
    }
    Ok(config)
}

/// The dev-mode banner: only values this run generated. A configured secret
/// or key is never printed, and no sample token is minted with a configured
/// secret (it would be a real credential in the log). `None` when nothing
/// was generated.
fn dev_banner(config: &Config, tokens: &TokenKeys) -> Option<String> {
    let auth = &config.auth;
    if !auth.jwt_secret_generated && !auth.api_key_generated {
        return None;
    }
    let mut out = String::from("corecast: dev mode: random secrets for this run only");
    if auth.jwt_secret_generated {
        out.push_str(&format!(
            "\nopen the demo page (it connects as alice and shows what is pushed to it):\n  http://{}/",
            browsable(config.ws.listen)
        ));
        let token = tokens.mint(
            "alice",
            None,
            Some("dev".into()),
            std::time::Duration::from_secs(3600),
        );
        out.push_str(&format!(
            "\n  CORECAST_JWT_SECRET={}\nconnect a client (token for uid alice, 1 h):\n  \
             websocat 'ws://{}/ws?token={token}'",
            config.auth.jwt_secret, config.ws.listen,
        ));
    } else {
        out.push_str(
            "\n  jwt_secret: configured (not shown); mint client tokens with \
             `corecast token --uid alice`",
        );
    }
    let key = if auth.api_key_generated {
        out.push_str(&format!(
            "\n  CORECAST_API_KEYS={}",
            config.auth.api_keys[0]
        ));
        config.auth.api_keys[0].as_str()
    } else {
        out.push_str("\n  api_keys: configured (not shown)");
        "<your API key>"
    };
    out.push_str(&format!(
        "\npush to alice:\n  \
         curl -X POST http://{}/v1/push/user/alice -H 'Authorization: Bearer {key}' \
         -H 'Content-Type: application/json' -d '{{\"data\":{{\"hello\":\"world\"}}}}'",
        config.http.listen,
    ));
    Some(out)
}

/// `addr` as a browser on this machine reaches it: an unspecified address
/// (listening on all interfaces) becomes loopback.
fn browsable(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
        }
        ip if ip.is_unspecified() => (std::net::Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Config { action }) = &cli.command {
        return config_command(action, cli.node.config.as_deref());
    }
    if let Err(e) = corecast::logging::init_from_env() {
        // No logger to report through: the error goes to stderr as is.
        eprintln!("corecast: {e}");
        return ExitCode::from(2);
    }
    let config = match load(&cli.node) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Token {
        uid,
        rooms,
        device,
        ttl,
    }) = cli.command
    {
        if config.auth.jwt_secret_generated {
            tracing::error!(
                "no jwt_secret configured (set CORECAST_JWT_SECRET or [auth] jwt_secret): \
                 a token signed with a random secret would be useless"
            );
            return ExitCode::from(2);
        }
        let ttl = match parse_ttl(&ttl) {
            Ok(ttl) => ttl,
            Err(e) => {
                tracing::error!("--ttl: {e}");
                return ExitCode::from(2);
            }
        };
        let ttl_max = std::time::Duration::from_millis(config.auth.token_ttl_max_ms);
        if ttl > ttl_max {
            tracing::error!(
                "--ttl {ttl:?} is above [auth] token_ttl_max_ms ({ttl_max:?}): \
                 the node would refuse the token"
            );
            return ExitCode::from(2);
        }
        let keys = TokenKeys::from_config(&config.auth);
        println!("{}", keys.mint(&uid, rooms, device, ttl));
        return ExitCode::SUCCESS;
    }
    let result = corecast::lifecycle::run(config, |config, node| {
        if let Some(banner) = dev_banner(config, &node.tokens) {
            println!("{banner}");
        }
        println!(
            "corecast: ready node_id={} ws={} http={} cores={}",
            node.node_id,
            config.ws.listen,
            config.http.listen,
            config.executor_count()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
