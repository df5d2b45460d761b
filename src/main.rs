//! The `countiq` binary: parse the command line, set up logging, call the
//! library. No business rules here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use countiq::actor::{ActorConfig, MAILBOX_DEPTH_DEFAULT};
use countiq::auth::jwks::{JWKS_REFRESH_INTERVAL_MAX, JWKS_REFRESH_INTERVAL_MIN, LEEWAY_MAX};
use countiq::auth::{
    load_secret, load_secrets_file, owner_for, AuthConfig, JwksSource, OwnKeys, OwnerMapping,
    ProviderConfig, Verifier,
};
use countiq::cluster::{nginx_config, Cluster, ProxyOptions, OWNER_JS};
use countiq::domain::OwnerId;
use countiq::node::NodeConfig;
use countiq::server::{serve_with, shutdown_signal, ServeConfig, Stopped};
use countiq::storage::fsync_probe;
use countiq::storage::wal::FsyncPolicy;

/// mimalloc instead of glibc malloc: a request allocates a few dozen small
/// blocks across hyper, axum and the actor; glibc's malloc/free were ~10%
/// of the server's profile under the hot-owner benchmark (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "countiq",
    version,
    about = "An inventory service modeled as a state machine."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API on the embedded store.
    Serve(Box<ServeArgs>),
    /// Print a bearer token (HS256 JWT) for an owner.
    Token(TokenArgs),
    /// Print the owner id that an identity provider's claim value maps to.
    OwnerId(OwnerIdArgs),
    /// Drive load against a running server and check correctness at the end.
    Load(countiq_load::LoadArgs),
    /// Cluster tools: the proxy configuration from the cluster file.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Check a history written by `countiq load --history FILE` for linearizability.
    Check(countiq_load::CheckArgs),
    /// Inspect a data directory's log and snapshots (read-only).
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Read every segment and snapshot; report records, LSN range, torn tail
    /// or corruption. Changes nothing. Exit 1 if anything is wrong.
    Verify {
        #[arg(long, env = "COUNTIQ_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Print every record, one line each. Changes nothing.
    Dump {
        #[arg(long, env = "COUNTIQ_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Measure this disk's append + fdatasync latency as the WAL sees it: a
    /// file prepared like a `--fsync always` segment (64 MiB of synced
    /// zeros), in a fresh directory of its own inside DIR (removed at the
    /// end), then COUNT timed rounds of append BYTES + fdatasync.
    FsyncProbe(FsyncProbeArgs),
}

#[derive(Args)]
struct FsyncProbeArgs {
    /// The file system to measure [default: ./data if it exists, else .].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Timed rounds (1-100000).
    #[arg(long, default_value_t = fsync_probe::PROBE_COUNT_DEFAULT)]
    count: u32,
    /// Bytes per append (1-1048576; count × bytes at most one 64 MiB
    /// segment) [default: one framed PATCH record, from the codec].
    #[arg(long)]
    bytes: Option<u32>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `--fsync`, mapped onto the storage layer's policy (storage does not
/// depend on the CLI).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Fsync {
    Always,
    Never,
}

impl From<Fsync> for FsyncPolicy {
    fn from(f: Fsync) -> Self {
        match f {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Never => FsyncPolicy::Never,
        }
    }
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print the nginx configuration (a conf.d file) that routes each owner
    /// to the node holding it, with the reasons for its settings.
    ProxyConfig {
        #[arg(long, env = "COUNTIQ_CLUSTER")]
        cluster: PathBuf,
        /// Port nginx listens on.
        #[arg(long, default_value_t = 8080)]
        listen_port: u16,
        /// Where owner.js is installed in the nginx image.
        #[arg(long, default_value = "/etc/nginx/countiq/owner.js")]
        js_path: String,
    },
    /// Print the njs script that extracts the owner from the bearer token.
    OwnerJs,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where the JWT secret comes from (shared by `serve` and `token`).
#[derive(Args)]
struct SecretArgs {
    /// The data directory (the embedded store; git-ignored `./data` by default).
    #[arg(long, env = "COUNTIQ_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// File holding the JWT secret (default: <data-dir>/jwt.secret, created 0600).
    #[arg(long, env = "COUNTIQ_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// Rotation file: `kid=secret` lines, oldest first; the last one signs,
    /// all verify. Replaces <data-dir>/jwt.secret; a secret given with
    /// --jwt-secret-file or COUNTIQ_JWT_SECRET still verifies kid-less tokens.
    #[arg(long, env = "COUNTIQ_JWT_SECRETS_FILE")]
    jwt_secrets_file: Option<PathBuf>,
    /// The JWT secret itself (at least 32 bytes); overrides the file.
    #[arg(
        long = "jwt-secret",
        env = "COUNTIQ_JWT_SECRET",
        hide_env_values = true,
        hide = true
    )]
    jwt_secret: Option<String>,
}

impl SecretArgs {
    fn load(&self) -> anyhow::Result<Vec<u8>> {
        Ok(load_secret(
            self.jwt_secret.as_deref(),
            self.jwt_secret_file.as_deref(),
            &self.data_dir,
        )?)
    }

    /// Every own secret: the rotation file's, or the single one.
    fn keys(&self) -> anyhow::Result<OwnKeys> {
        let Some(path) = &self.jwt_secrets_file else {
            return Ok(OwnKeys::single(&self.load()?));
        };
        let kids = load_secrets_file(path)?;
        let explicit = self.jwt_secret.is_some() || self.jwt_secret_file.is_some();
        let kidless = if explicit { Some(self.load()?) } else { None };
        Ok(OwnKeys::with_kids(kids, kidless))
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OwnerIdMode {
    /// A claim that is a valid owner id is used as it is; others are derived.
    Auto,
    /// Every claim value is derived (with the issuer).
    Derive,
}

impl From<OwnerIdMode> for OwnerMapping {
    fn from(m: OwnerIdMode) -> Self {
        match m {
            OwnerIdMode::Auto => OwnerMapping::Auto,
            OwnerIdMode::Derive => OwnerMapping::Derive,
        }
    }
}

/// Tokens from an identity provider (README "Tokens from an identity provider").
#[derive(Args)]
struct ProviderArgs {
    /// The provider's JWK set from a file (read at start, re-read on refresh).
    #[arg(long, env = "COUNTIQ_JWKS_FILE", conflicts_with = "jwks_url")]
    jwks_file: Option<PathBuf>,
    /// The provider's JWK set URL (https, or http to a loopback address),
    /// fetched at start and refreshed in the background.
    #[arg(long, env = "COUNTIQ_JWKS_URL")]
    jwks_url: Option<String>,
    /// The exact `iss` of the provider's tokens (required with a JWKS).
    #[arg(long, env = "COUNTIQ_ISSUER")]
    issuer: Option<String>,
    /// An accepted `aud` (repeat, or separate with commas; required with a JWKS).
    #[arg(long, env = "COUNTIQ_AUDIENCE", value_delimiter = ',')]
    audience: Vec<String>,
    /// Clock leeway for provider tokens' exp and nbf (at most 5m; own tokens: none).
    #[arg(long, env = "COUNTIQ_LEEWAY", default_value = "30s", value_parser = parse_leeway)]
    leeway: Duration,
    /// The claim that names the owner.
    #[arg(long, env = "COUNTIQ_OWNER_CLAIM", default_value = "sub")]
    owner_claim: String,
    /// How a claim value becomes an owner id.
    #[arg(
        long,
        env = "COUNTIQ_OWNER_ID_MODE",
        value_enum,
        default_value = "auto"
    )]
    owner_id_mode: OwnerIdMode,
    /// How often the JWK set is refreshed (30s-24h); also soon after an
    /// unknown kid, at most once per 10s.
    #[arg(long, env = "COUNTIQ_JWKS_REFRESH", default_value = "5m", value_parser = parse_refresh)]
    jwks_refresh: Duration,
    /// Refuse own HS256 tokens: only the provider's are accepted.
    #[arg(long, env = "COUNTIQ_NO_OWN_TOKENS")]
    no_own_tokens: bool,
}

impl ProviderArgs {
    fn config(&self) -> anyhow::Result<Option<ProviderConfig>> {
        let source = match (&self.jwks_file, &self.jwks_url) {
            (Some(path), _) => JwksSource::File(path.clone()),
            (None, Some(url)) => JwksSource::Url(url.clone()),
            (None, None) => {
                anyhow::ensure!(
                    self.issuer.is_none() && self.audience.is_empty(),
                    "--issuer and --audience need --jwks-file or --jwks-url"
                );
                anyhow::ensure!(
                    !self.no_own_tokens,
                    "--no-own-tokens needs --jwks-file or --jwks-url"
                );
                return Ok(None);
            }
        };
        let issuer = self
            .issuer
            .as_deref()
            .context("--issuer is required with --jwks-file or --jwks-url")?;
        anyhow::ensure!(
            !self.audience.is_empty(),
            "--audience is required with --jwks-file or --jwks-url"
        );
        let audiences: Vec<&str> = self.audience.iter().map(String::as_str).collect();
        let mut config = ProviderConfig::new(source, issuer, &audiences);
        config.leeway = self.leeway;
        config.owner_claim = self.owner_claim.clone();
        config.owner_mapping = self.owner_id_mode.into();
        config.refresh_interval = self.jwks_refresh;
        Ok(Some(config))
    }
}

/// A duration flag within `min..=max`; the message names the bounds from
/// the same constants that enforce them.
fn bounded_duration(raw: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if d < min || d > max {
        return Err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

fn parse_leeway(raw: &str) -> Result<Duration, String> {
    bounded_duration(raw, Duration::ZERO, LEEWAY_MAX)
}

fn parse_refresh(raw: &str) -> Result<Duration, String> {
    bounded_duration(raw, JWKS_REFRESH_INTERVAL_MIN, JWKS_REFRESH_INTERVAL_MAX)
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "COUNTIQ_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[command(flatten)]
    secret: SecretArgs,
    #[command(flatten)]
    provider: ProviderArgs,
    /// `always`: fdatasync before every reply (survives power loss).
    /// `never`: write only (survives a process crash, not a power cut).
    #[arg(long, env = "COUNTIQ_FSYNC", value_enum, default_value = "always")]
    fsync: Fsync,
    /// Per-owner mailbox depth (1-1048576); a full mailbox answers 503.
    #[arg(long, env = "COUNTIQ_MAILBOX_DEPTH", default_value_t = MAILBOX_DEPTH_DEFAULT as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    mailbox_depth: u32,
    /// Park an owner's actor after this long idle (0 = never).
    #[arg(long, env = "COUNTIQ_IDLE_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_after: Duration,
    /// How long idempotency keys are kept (1s-30d).
    #[arg(long, env = "COUNTIQ_IDEMPOTENCY_TTL", default_value = "24h", value_parser = parse_ttl)]
    idempotency_ttl: Duration,
    /// Snapshot after this many log records (0 = not by count).
    #[arg(long, env = "COUNTIQ_SNAPSHOT_EVERY_RECORDS", default_value_t = countiq::node::SNAPSHOT_EVERY_RECORDS_DEFAULT)]
    snapshot_every_records: u64,
    /// Snapshot after this long if anything changed (0 = not by time).
    #[arg(long, env = "COUNTIQ_SNAPSHOT_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    snapshot_interval: Duration,
    /// Roll to a new WAL segment at this size in bytes (1 MiB-1 GiB).
    #[arg(long, env = "COUNTIQ_SEGMENT_BYTES", default_value_t = countiq::storage::segment::SEGMENT_BYTES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1 << 20..=1 << 30))]
    segment_bytes: u64,
    /// Log format (level via RUST_LOG, default info).
    #[arg(long, env = "COUNTIQ_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Tokio worker threads (0 = one per core). The WAL writer is a thread
    /// of its own on top of these.
    #[arg(long, env = "COUNTIQ_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// Cluster file (node ids and addresses): serve only the owners the
    /// ring gives this node, 421 for the others.
    #[arg(long, env = "COUNTIQ_CLUSTER", requires = "node_id")]
    cluster: Option<PathBuf>,
    /// This node's id in the cluster file.
    #[arg(long, env = "COUNTIQ_NODE_ID", requires = "cluster")]
    node_id: Option<String>,
}

fn parse_ttl(raw: &str) -> Result<Duration, String> {
    bounded_duration(
        raw,
        Duration::from_secs(1),
        Duration::from_secs(30 * 24 * 3600),
    )
}

#[derive(Args)]
struct OwnerIdArgs {
    /// The provider's issuer, exactly as its tokens' `iss`.
    #[arg(long)]
    issuer: String,
    /// The owner claim's value (e.g. `auth0|6543abc`).
    #[arg(long)]
    subject: String,
    #[arg(long, value_enum, default_value = "auto")]
    owner_id_mode: OwnerIdMode,
}

#[derive(Args)]
struct TokenArgs {
    /// Owner id: 1-64 characters of [A-Za-z0-9._-].
    #[arg(long)]
    owner: String,
    /// How long the token is valid.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    secret: SecretArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => run_serve(*args),
        Command::Token(args) => run_token(args),
        Command::OwnerId(args) => run_owner_id(args),
        Command::Load(args) => run_load(args),
        Command::Cluster { command } => run_cluster(command),
        Command::Check(args) => countiq_load::check_file(&args, &mut std::io::stdout().lock())
            .map(exit)
            .map_err(Into::into),
        Command::Wal { command } => run_wal(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("countiq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.log_format);
    // An invariant violation anywhere is a bug: stop the process rather than
    // keep serving from a state nobody can vouch for. Nothing acknowledged
    // is lost (replies wait for fsync); restart recovers.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    let own = if args.provider.no_own_tokens {
        None
    } else {
        Some(args.secret.keys()?)
    };
    let provider = args.provider.config()?;
    // nginx routes by the token's raw `sub` (deploy/nginx/owner.js); a
    // provider's subject maps to another owner id on the node (README
    // "Tokens from an identity provider"), so every such request would be
    // misdirected (421) for good. Refuse the combination until the proxy
    // hashes the mapped id.
    anyhow::ensure!(
        !(args.cluster.is_some() && provider.is_some()),
        "--cluster cannot be combined with --jwks-file/--jwks-url: the proxy routes by the \
         token's raw `sub`, which is the node's owner id only for own tokens"
    );
    let auth = Verifier::from_config(AuthConfig { own, provider })?;
    let placement = match (&args.cluster, &args.node_id) {
        (Some(path), Some(id)) => Some(Cluster::load(path)?.placement(id)?),
        _ => None,
    };
    let mut node = NodeConfig::new(&args.secret.data_dir);
    node.fsync = args.fsync.into();
    node.segment_bytes = args.segment_bytes;
    node.actor = ActorConfig {
        mailbox_depth: args.mailbox_depth as usize,
        idle_after: (!args.idle_after.is_zero()).then_some(args.idle_after),
        key_ttl: args.idempotency_ttl,
    };
    node.snapshot_every_records = args.snapshot_every_records;
    node.snapshot_interval = (!args.snapshot_interval.is_zero()).then_some(args.snapshot_interval);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        runtime.worker_threads(args.worker_threads);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("binding {}", args.addr))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, data_dir = %args.secret.data_dir.display(), fsync = ?args.fsync, "listening");
        let config = ServeConfig { addr, node, jwt_secret: Vec::new() };
        match serve_with(config, auth, placement, listener, shutdown_signal()).await? {
            Stopped::Gracefully => Ok(ExitCode::SUCCESS),
            Stopped::LogFailed(_) => Ok(ExitCode::from(2)),
        }
    })
}

fn run_load(args: countiq_load::LoadArgs) -> anyhow::Result<ExitCode> {
    let json = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.sweep_connections.is_some() {
        let sweep = runtime.block_on(countiq_load::sweep(args))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&sweep)?);
        } else {
            countiq_load::write_sweep_human(&mut std::io::stdout().lock(), &sweep)?;
        }
        return Ok(exit(sweep.ok()));
    }
    let report = runtime.block_on(countiq_load::run(args))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        countiq_load::write_human(&mut std::io::stdout().lock(), &report)?;
    }
    // Exit 1 when a correctness check failed, so scripts notice.
    Ok(exit(report.ok()))
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_cluster(command: ClusterCommand) -> anyhow::Result<ExitCode> {
    match command {
        ClusterCommand::ProxyConfig {
            cluster,
            listen_port,
            js_path,
        } => {
            let options = ProxyOptions {
                listen_port,
                js_path,
            };
            print!("{}", nginx_config(&Cluster::load(&cluster)?, &options));
        }
        ClusterCommand::OwnerJs => print!("{OWNER_JS}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_wal(command: WalCommand) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match command {
        WalCommand::Verify { data_dir } => {
            let report = countiq::storage::tools::verify(&data_dir, &mut out)?;
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        WalCommand::Dump { data_dir } => {
            countiq::storage::tools::dump(&data_dir, &mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::FsyncProbe(args) => {
            let dir = args.dir.unwrap_or_else(|| {
                let data = PathBuf::from("./data");
                if data.is_dir() {
                    data
                } else {
                    PathBuf::from(".")
                }
            });
            let bytes = args.bytes.unwrap_or_else(fsync_probe::patch_record_bytes);
            let report = fsync_probe::probe(&dir, args.count, bytes)
                .with_context(|| format!("fsync-probe in {}", dir.display()))?;
            if args.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                fsync_probe::write_human(&mut out, &report)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let owner = OwnerId::new(&args.owner).context("--owner")?;
    println!("{}", args.secret.keys()?.mint(&owner, args.ttl));
    Ok(ExitCode::SUCCESS)
}

fn run_owner_id(args: OwnerIdArgs) -> anyhow::Result<ExitCode> {
    let owner =
        owner_for(&args.issuer, &args.subject, args.owner_id_mode.into()).context("--subject")?;
    println!("{owner}");
    Ok(ExitCode::SUCCESS)
}
