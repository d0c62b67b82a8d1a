//! One file per subcommand (`update ...` and `bench`); each takes the run's [`Context`].

pub mod bench;
pub mod cancel;
pub mod clear_url;
pub mod finish;
pub mod show;
pub mod start;

pub use bench::BenchOptions;

use hotate_proto::pb;

use crate::error::{Failed, UsageError};
use crate::i18n::Lang;
use crate::inputs::{self, Inputs};
use crate::server::Session;
use crate::state::{StateDir, Terminal, UpdateRecord, WriteCache};

/// What every subcommand gets.
#[derive(Debug, Clone)]
pub struct Context {
    pub state: StateDir,
    pub lang: Lang,
    pub inputs: Inputs,
}

impl Context {
    /// Asks for (or reuses) the URL and credentials and logs in as this terminal.
    ///
    /// # Errors
    /// On a missing input, an unreachable server or a refused login.
    pub async fn login(&self, terminal: &Terminal) -> anyhow::Result<Session> {
        Ok(self.login_and_begin(terminal, "").await?.0)
    }

    /// As [`Context::login`], beginning the upload of update `guid` with it (unless
    /// empty): the server's reply if it began.
    ///
    /// # Errors
    /// On a missing input, an unreachable server or a refused login.
    pub async fn login_and_begin(
        &self,
        terminal: &Terminal,
        guid: &str,
    ) -> anyhow::Result<(Session, Option<pb::BeginUploadReply>)> {
        let url = inputs::server_url(&self.state, &self.inputs, self.lang)?;
        let credentials = inputs::credentials(&self.inputs, self.lang)?;
        let login = crate::server::Login {
            credentials: &credentials,
            terminal: &terminal.name,
            begin_update: guid,
        };
        let logged_in =
            Session::login(&url, self.ca(), self.inputs.insecure, &login, self.lang).await?;
        inputs::remember_url(&self.state, &url)?;
        Ok(logged_in)
    }

    pub fn ca(&self) -> Option<&std::path::Path> {
        self.inputs.ca.as_deref()
    }

    /// The record of the update in progress.
    ///
    /// # Errors
    /// When there is none.
    pub fn current_update(&self) -> anyhow::Result<UpdateRecord> {
        self.state
            .update()?
            .ok_or_else(|| Failed(self.lang.no_update_hint()).into())
    }

    /// Puts the write cache back to its mode before the update and clears local state,
    /// saying so as the manual does.
    ///
    /// # Errors
    /// When the state files cannot be written.
    pub fn restore_terminal(&self, before: WriteCache) -> anyhow::Result<()> {
        crate::say!("{}", self.lang.write_cache_restoring(before.word()));
        self.state.set_write_cache(before)?;
        crate::say!("{}", self.lang.write_cache_restored(before.word()));
        crate::say!("{}", self.lang.clearing_state());
        self.state.clear_update()?;
        crate::say!("{}", self.lang.cleared_state());
        Ok(())
    }
}

/// Options of `update finish`.
#[derive(Debug, Clone, Default)]
pub struct FinishOptions {
    pub comment: Option<String>,
    pub limit_rate: Option<u64>,
}

/// Refuses an image path that does not exist or is not a regular file, saying what it is.
pub(crate) fn check_image(path: &std::path::Path, lang: crate::i18n::Lang) -> anyhow::Result<()> {
    if hotate_engine::direct_io::is_device_path(path) {
        return Ok(()); // A volume or disk: opened as one below.
    }
    let shown = path.display().to_string();
    let kind = match std::fs::metadata(path) {
        Err(_) => return Err(UsageError(lang.image_missing(&shown)).into()),
        Ok(meta) if meta.is_file() => return Ok(()),
        Ok(meta) => file_kind(&meta.file_type()),
    };
    Err(UsageError(lang.image_is_not_a_file(&shown, kind)).into())
}

fn file_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "named pipe (FIFO)";
        }
        if kind.is_char_device() {
            return "character device";
        }
        if kind.is_block_device() {
            return "block device";
        }
        if kind.is_socket() {
            return "socket";
        }
    }
    if kind.is_dir() {
        "directory"
    } else {
        "special file"
    }
}
