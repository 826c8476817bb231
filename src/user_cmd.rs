//! `isthmus user add|passwd|grant|revoke|remove|list`: users and their
//! grants, through any node (they live in the replicated `_auth` system
//! keyspace and reach every node of every datacenter).
//!
//! New passwords are read from a file (`--new-password-file`) or from
//! standard input, never from the command line.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use isthmus_client::Session;
use isthmus_client::wire::{Grant, RequestBody, ResponseBody, UserRequest, UserResponse};

use crate::client_cmd::{Target, read_password};

/// User subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user (password from --new-password-file or stdin).
    Add {
        #[command(flatten)]
        target: Target,
        /// The new user.
        name: String,
        /// Grants: role:admin, role:readwrite, role:readonly, read:KS,
        /// write:KS, read:*, write:*, admin.
        #[arg(long = "grant")]
        grants: Vec<Grant>,
        /// File holding the new password (else one line of stdin).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Change a user's password (any user may change their own).
    Passwd {
        #[command(flatten)]
        target: Target,
        /// The user.
        name: String,
        /// File holding the new password (else one line of stdin).
        #[arg(long)]
        new_password_file: Option<PathBuf>,
    },
    /// Grant a role or permission.
    Grant {
        #[command(flatten)]
        target: Target,
        /// The user.
        name: String,
        /// What to grant (see `add`).
        grant: Grant,
    },
    /// Revoke a role or permission.
    Revoke {
        #[command(flatten)]
        target: Target,
        /// The user.
        name: String,
        /// What to revoke.
        grant: Grant,
    },
    /// Remove a user.
    Remove {
        #[command(flatten)]
        target: Target,
        /// The user.
        name: String,
    },
    /// List users and their grants.
    List {
        #[command(flatten)]
        target: Target,
    },
}

fn new_password(file: Option<PathBuf>) -> anyhow::Result<String> {
    match file {
        Some(path) => read_password(&path),
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the new password from stdin")?;
            let password = line.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                bail!("no new password: give --new-password-file or one line on stdin");
            }
            Ok(password)
        }
    }
}

/// Run one user command; prints what changed or the listing.
pub fn run(command: UserCommand) -> anyhow::Result<String> {
    let (target, request) = match command {
        UserCommand::Add {
            target,
            name,
            grants,
            new_password_file,
        } => {
            let password = new_password(new_password_file)?;
            (
                target,
                UserRequest::Add {
                    name,
                    password,
                    grants,
                },
            )
        }
        UserCommand::Passwd {
            target,
            name,
            new_password_file,
        } => {
            let password = new_password(new_password_file)?;
            (target, UserRequest::Passwd { name, password })
        }
        UserCommand::Grant {
            target,
            name,
            grant,
        } => (target, UserRequest::Grant { name, grant }),
        UserCommand::Revoke {
            target,
            name,
            grant,
        } => (target, UserRequest::Revoke { name, grant }),
        UserCommand::Remove { target, name } => (target, UserRequest::Remove { name }),
        UserCommand::List { target } => (target, UserRequest::List),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let timeout = Duration::from_millis(target.timeout_ms);
        let options = target.security.options("isthmus-cli")?;
        let session = Session::connect_with(&target.addr, &options, timeout)
            .await
            .with_context(|| format!("connecting to {}", target.addr))?;
        match session.call(RequestBody::User(request), timeout).await? {
            ResponseBody::User(UserResponse::Done) => Ok("ok\n".to_owned()),
            ResponseBody::User(UserResponse::Users(users)) => Ok(users
                .iter()
                .map(|u| {
                    let grants: Vec<String> = u.grants.iter().map(ToString::to_string).collect();
                    format!("{}\t{}\n", u.name, grants.join(" "))
                })
                .collect()),
            other => bail!("unexpected answer {other:?}"),
        }
    })
}
