//! `hotate-server`: parses the command line and runs the command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use hotate_server::limits::Limits;
use hotate_server::{Lang, Places, ServeOptions, ServeRole, admin, cert, serve, shutdown_signal};

#[derive(Parser)]
#[command(name = "hotate-server", version, about = "Hotate management server")]
struct Cli {
    /// Data dir (metadata, chunk store, manifests).
    #[arg(
        long,
        global = true,
        env = "HOTATE_DATA",
        default_value = "./hotate-data"
    )]
    data: PathBuf,
    /// Metadata database shared by several servers: postgres://USER@HOST:PORT/DB
    /// (PostgreSQL 13 or later). Without it, SQLite in the data dir.
    #[arg(long, global = true, env = "HOTATE_META")]
    meta: Option<String>,
    /// Chunks and manifests in an S3-compatible bucket: s3://BUCKET/PREFIX (endpoint and
    /// keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ALLOW_HTTP). Without it, the data dir's store/ and manifests/.
    #[arg(long, global = true, env = "HOTATE_STORE")]
    store: Option<String>,
    /// Machine-readable output for listings.
    #[arg(long, global = true)]
    json: bool,
    /// Language of the messages: en or ja [default: from LC_ALL or LANG, else en].
    #[arg(long, global = true)]
    lang: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control and transfer services.
    Serve {
        /// all: the control port (with the console) and the transfer port in one process;
        /// control: only the control port, handing uploads to the transfer servers
        /// registered in the metadata; transfer: only the transfer port, registered as
        /// --advertise-transfer. Roles other than all need --meta (one shared database).
        #[arg(long, value_enum, default_value_t = ServeRole::All)]
        role: ServeRole,
        /// Address of the control port: terminals' logins and updates, and the console.
        #[arg(long, default_value = "0.0.0.0:30806")]
        listen: SocketAddr,
        /// Address of the transfer port: the uploads.
        #[arg(long, default_value = "0.0.0.0:30811")]
        transfer_listen: SocketAddr,
        /// Transfer endpoint told to clients, e.g. https://files.example:30811 (with
        /// --role transfer: the URL it registers, which terminals must reach)
        #[arg(long)]
        advertise_transfer: Option<String>,
        /// TLS certificate chain (PEM): both ports then speak TLS only.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Connections open at once per port; more are closed as they arrive.
        #[arg(long, default_value_t = Limits::default().max_connections)]
        max_connections: usize,
        /// Of those, from one address [default: half of --max-connections].
        #[arg(long)]
        max_connections_per_address: Option<usize>,
        /// Upload streams at once; more are told to retry.
        #[arg(long, default_value_t = Limits::default().max_uploads)]
        max_uploads: usize,
        /// How soon a new connection must speak, and an upload stream send `open`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        handshake_timeout: Duration,
        /// How long a connection may stay silent (clients ping every 30 s).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        idle_timeout: Duration,
        /// Password checks (argon2, ~19 MiB each) at once [default: the cores].
        #[arg(long)]
        login_concurrency: Option<usize>,
        /// Serve /metrics to anyone (by default only to loopback and logged-in callers).
        #[arg(long)]
        public_metrics: bool,
        /// Takes the place of the global --json, which means nothing here: `serve` logs.
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage disks and versions.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Inspect and abort updates.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Delete versions.
    #[command(subcommand)]
    Version(VersionCommand),
    /// Verify, collect and count the chunk store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Copy this data dir (users, disks, versions, manifests, chunks) into PostgreSQL
    /// and/or an S3 bucket, verifying every chunk; run it again after an interruption.
    Migrate {
        /// Target metadata: postgres://USER@HOST:PORT/DB.
        #[arg(long)]
        to_meta: Option<String>,
        /// Target store: s3://BUCKET/PREFIX (the AWS_* variables name the endpoint).
        #[arg(long)]
        to_store: Option<String>,
    },
    /// Certificates for TLS.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum VersionCommand {
    /// Delete a version (not the latest, nor the base of an update in progress).
    Delete {
        /// Disk name or UUID.
        disk: String,
        /// The version to delete.
        version: String,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Read and check every referenced chunk; quarantine the damaged. Exit 1 on damage.
    Verify {
        /// Check every chunk in the store, referenced or not.
        #[arg(long)]
        all: bool,
    },
    /// Delete chunks, temp files and manifests that nothing references.
    Gc {
        /// Count what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Chunks and bytes stored, and how many are unreferenced.
    Stats,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (password of 8 characters or more from HOTATE_PASSWORD, else prompt or
    /// stdin).
    Add {
        /// The user name terminals and the console log in with.
        name: String,
        /// admin (also aborts updates and manages) or operator (its own updates); by
        /// default the first user is an admin, later ones operators.
        #[arg(long, value_parser = ["admin", "operator"])]
        role: Option<String>,
    },
    /// List users and their roles.
    List,
    /// Delete a user and end its sessions.
    Delete {
        /// User name.
        name: String,
    },
    /// Set a user's password (as `add` reads it) and end its sessions.
    Passwd {
        /// User name.
        name: String,
    },
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Import a disk image (raw, qcow2, VHD or VHDX, told by its content) as a new disk.
    Import {
        /// The new disk's name.
        name: String,
        /// The image file.
        image: PathBuf,
        /// Block size in bytes: the unit of dedup and transfer (a power of two).
        #[arg(long, default_value_t = hotate_engine::block::DEFAULT_BLOCK_SIZE)]
        block_size: u32,
        /// The first version's comment.
        #[arg(long, default_value = "Imported.")]
        comment: String,
    },
    /// List disks.
    List,
    /// List a disk's versions, oldest first.
    Versions {
        /// Disk name or UUID.
        disk: String,
    },
    /// Delete a disk with its versions (refused during an update unless --force).
    Delete {
        /// Disk name or UUID.
        disk: String,
        /// Abort the disk's update in progress first.
        #[arg(long)]
        force: bool,
    },
    /// Write a version as an image (raw, qcow2, VHDX or VHD), every chunk verified.
    Export {
        /// Disk name or UUID.
        disk: String,
        /// The version to write [default: the latest].
        #[arg(long)]
        version: Option<String>,
        /// The image file to write.
        #[arg(long)]
        output: PathBuf,
        /// raw, qcow2, vhdx or vhd (with --parent: an overlay or differencing image).
        #[arg(long, default_value = "raw")]
        format: String,
        /// Write only what differs from this earlier version, as an overlay (qcow2) or
        /// differencing image (vhdx, vhd) of its export.
        #[arg(long)]
        parent: Option<String>,
        /// Where that version's image is [default: PARENT.FORMAT beside the output].
        #[arg(long, requires = "parent")]
        parent_image: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// List updates.
    List,
    /// Stop and discard the upload of a disk's update; the update stays, and its terminal
    /// runs `update finish` again (「更新中断」).
    Abort {
        /// Disk name or UUID.
        disk: String,
    },
    /// End a disk's update for good, when its terminal will not come back (「更新取消」).
    Cancel {
        /// Disk name or UUID.
        disk: String,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a self-signed cert.pem and key.pem.
    Generate {
        /// Directory to write cert.pem and key.pem in.
        #[arg(long)]
        out: PathBuf,
        /// Host names and addresses terminals reach the server by (one or more).
        #[arg(long, required = true, num_args = 1..)]
        host: Vec<String>,
        /// Replace an existing pair.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let asked = Lang::detect(hotate_proto::cli_ja::lang_flag().as_deref());
    let japanese = (asked == Lang::Ja).then_some(&hotate_server::cli_ja::WORDS);
    let cli: Cli = match hotate_proto::cli_ja::parse(japanese) {
        Ok(cli) => cli,
        Err(code) => return ExitCode::from(code),
    };
    admin::set_lang(Lang::detect(cli.lang.as_deref()));
    if !matches!(cli.command, Command::Serve { .. }) {
        end_quietly_on_closed_pipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOTATE_LOG")
                .unwrap_or_else(|_| "warn,hotate_server=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", admin::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// Colour in the log only on a terminal, and not when `NO_COLOR` is set: a log file or
/// journal gets plain text.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// An admin command whose output goes into a closed pipe (`disk list | head -1`) ends
/// quietly, as Unix tools do, instead of a panic about a broken pipe. (`serve` keeps
/// Rust's default: it writes only to sockets and its log.)
#[allow(unsafe_code)]
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores one signal's default disposition at the start of `main`, before
    // any other thread runs; no handler is installed.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data = Places {
        data: cli.data,
        meta: cli.meta,
        store: cli.store,
    };
    match cli.command {
        Command::Serve {
            role,
            listen,
            transfer_listen,
            advertise_transfer,
            tls_cert,
            tls_key,
            max_connections,
            max_connections_per_address,
            max_uploads,
            handshake_timeout,
            idle_timeout,
            login_concurrency,
            public_metrics,
            json: _,
        } => {
            let limits = Limits {
                max_connections,
                max_connections_per_address: max_connections_per_address
                    .unwrap_or(max_connections / 2)
                    .max(1),
                max_uploads,
                handshake_timeout,
                idle_timeout,
                login_concurrency: login_concurrency.unwrap_or(Limits::default().login_concurrency),
            };
            let options = ServeOptions {
                role,
                places: data,
                listen,
                transfer_listen,
                advertise_transfer,
                tls: tls_cert.zip(tls_key),
                limits,
                public_metrics,
            };
            serve(options, shutdown_signal()).await
        }
        Command::User(UserCommand::Add { name, role }) => {
            admin::user_add(&data, &name, role.as_deref())
        }
        Command::User(UserCommand::List) => admin::user_list(&data, cli.json),
        Command::User(UserCommand::Delete { name }) => admin::user_delete(&data, &name),
        Command::User(UserCommand::Passwd { name }) => admin::user_passwd(&data, &name),
        Command::Disk(DiskCommand::Import {
            name,
            image,
            block_size,
            comment,
        }) => admin::disk_import(&data, &name, &image, block_size, &comment, cli.json).await,
        Command::Disk(DiskCommand::List) => admin::disk_list(&data, cli.json),
        Command::Disk(DiskCommand::Versions { disk }) => {
            admin::disk_versions(&data, &disk, cli.json)
        }
        Command::Disk(DiskCommand::Export {
            disk,
            version,
            output,
            format,
            parent,
            parent_image,
        }) => admin::disk_export(
            &data,
            &disk,
            version.as_deref(),
            &output,
            &admin::ExportFormat {
                format,
                parent,
                parent_image,
            },
        ),
        Command::Disk(DiskCommand::Delete { disk, force }) => {
            admin::disk_delete(&data, &disk, force)
        }
        Command::Version(VersionCommand::Delete { disk, version }) => {
            admin::version_delete(&data, &disk, &version)
        }
        Command::Store(StoreCommand::Verify { all }) => admin::store_verify(&data, all, cli.json),
        Command::Store(StoreCommand::Gc { dry_run }) => admin::store_gc(&data, dry_run, cli.json),
        Command::Store(StoreCommand::Stats) => admin::store_stats(&data, cli.json),
        Command::Update(UpdateCommand::List) => admin::update_list(&data, cli.json),
        Command::Update(UpdateCommand::Abort { disk }) => admin::update_abort(&data, &disk),
        Command::Update(UpdateCommand::Cancel { disk }) => admin::update_cancel(&data, &disk),
        Command::Migrate { to_meta, to_store } => {
            admin::migrate(&data, to_meta, to_store, cli.json)
        }
        Command::Cert(CertCommand::Generate { out, host, force }) => {
            cert::generate(&out, &host, force)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and argument has Japanese help: one added without it fails here.
    #[test]
    fn every_command_and_argument_has_japanese_help() {
        let words = &hotate_server::cli_ja::WORDS;
        let mut command = hotate_proto::cli_ja::japanese(Cli::command(), words);
        command.build();
        let missing = hotate_proto::cli_ja::untranslated(&command);
        assert!(missing.is_empty(), "no Japanese help: {missing:?}");
    }
}
