//! The keys of encrypted vaults: the options every command takes to unlock
//! one, `init --encrypt`, and `vmbackup key add|remove|list`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use backup_core::{KeySource, Vault};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::globals::Globals;
use crate::output::outln;

/// The environment variable that holds a vault's passphrase.
pub const PASSPHRASE_ENV: &str = "VMBACKUP_PASSPHRASE";
/// The environment variable that holds the passphrase `key add` adds.
pub const NEW_PASSPHRASE_ENV: &str = "VMBACKUP_NEW_PASSPHRASE";

/// How to unlock an encrypted vault (every command takes these). Without
/// them, the passphrase comes from $VMBACKUP_PASSPHRASE, or from a prompt
/// when stdin is a terminal.
#[derive(Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// Read the vault's passphrase from this file (its first line).
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "key_file")]
    passphrase_file: Option<PathBuf>,
    /// Unlock the vault with this key file (with `init --encrypt`: made
    /// when it does not exist).
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

/// `vmbackup key ...`.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the vault's key slots (never their secrets).
    List {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Add a passphrase or key file that opens the vault; nothing but the
    /// vault's config is rewritten. The new passphrase comes from
    /// --new-passphrase-file, $VMBACKUP_NEW_PASSPHRASE, or a prompt.
    Add {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// Read the new passphrase from this file (its first line).
        #[arg(long, value_name = "FILE", conflicts_with = "new_key_file")]
        new_passphrase_file: Option<PathBuf>,
        /// Add this key file (made, 32 random bytes, when it does not exist).
        #[arg(long, value_name = "FILE")]
        new_key_file: Option<PathBuf>,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key slot; refuses to remove the last one.
    Remove {
        /// The vault.
        #[arg(long)]
        vault: PathBuf,
        /// The slot's id, as `key list` shows it.
        slot: String,
    },
}

/// A bad-usage error (exit code 2).
fn usage(what: &str, why: String) -> anyhow::Error {
    backup_core::Error::InvalidArgument { what: what.into(), why }.into()
}

/// The first line of a passphrase file.
fn read_passphrase_file(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read passphrase file {}", path.display()))?;
    let line = text.lines().next().unwrap_or_default().to_string();
    if line.is_empty() {
        bail!("passphrase file {} is empty", path.display());
    }
    Ok(line)
}

fn prompt(what: &str) -> Result<String> {
    let p = rpassword::prompt_password(what).context("cannot read the passphrase from the terminal")?;
    if p.is_empty() {
        bail!("an empty passphrase is not accepted");
    }
    Ok(p)
}

impl KeyArgs {
    /// The key given by options or the environment, without prompting.
    pub fn given(&self) -> Result<Option<KeySource>> {
        if let Some(f) = &self.key_file {
            return Ok(Some(KeySource::key_file(f)));
        }
        if let Some(f) = &self.passphrase_file {
            return Ok(Some(KeySource::passphrase(read_passphrase_file(f)?)));
        }
        match std::env::var(PASSPHRASE_ENV) {
            Ok(p) if !p.is_empty() => Ok(Some(KeySource::passphrase(p))),
            _ => Ok(None),
        }
    }
}

/// Opens a vault: with the key given, or, when the vault is encrypted and
/// none was given, with a passphrase asked on the terminal.
pub fn open(path: &Path, g: &Globals) -> Result<Vault> {
    open_keyed(path, g, g.key.given()?)
}

/// The environment variable that holds the passphrase of `copy --from`.
pub const FROM_PASSPHRASE_ENV: &str = "VMBACKUP_FROM_PASSPHRASE";

/// Opens the source vault of `copy`: with --from-key-file or
/// --from-passphrase-file, else $VMBACKUP_FROM_PASSPHRASE, else a prompt.
pub fn open_source(path: &Path, g: &Globals, key_file: Option<&Path>, passphrase_file: Option<&Path>) -> Result<Vault> {
    open_keyed(path, g, key_from(key_file, passphrase_file, Some(FROM_PASSPHRASE_ENV))?)
}

/// Opens the second site of a policy's `[copy]`: with its key file or
/// passphrase file, else unencrypted (or a prompt on a terminal).
pub fn open_copy_target(
    path: &Path,
    g: &Globals,
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<Vault> {
    open_keyed(path, g, key_from(key_file, passphrase_file, None)?)
}

/// The key a key file or passphrase file gives, else the passphrase in
/// the environment variable `env`.
fn key_from(key_file: Option<&Path>, passphrase_file: Option<&Path>, env: Option<&str>) -> Result<Option<KeySource>> {
    Ok(match (key_file, passphrase_file) {
        (Some(f), _) => Some(KeySource::key_file(f)),
        (None, Some(f)) => Some(KeySource::passphrase(read_passphrase_file(f)?)),
        (None, None) => match env.map(std::env::var) {
            Some(Ok(p)) if !p.is_empty() => Some(KeySource::passphrase(p)),
            _ => None,
        },
    })
}

/// Opens a vault with `given`, or, when it is encrypted and nothing was
/// given, with a passphrase asked on the terminal.
fn open_keyed(path: &Path, g: &Globals, given: Option<KeySource>) -> Result<Vault> {
    let prompted = given.is_none();
    let mut options = g.options.clone();
    options.key = given;
    match g.open_with(path, options.clone()) {
        Err(backup_core::Error::KeyRequired { .. }) if prompted && std::io::stdin().is_terminal() => {
            let p = prompt(&format!("passphrase of vault {}: ", path.display()))?;
            Ok(g.open_with(path, options.with_key(KeySource::passphrase(p)))?)
        }
        r => Ok(r?),
    }
}

/// `vmbackup init VAULT [--encrypt]`.
pub fn init(path: &Path, encrypt: bool, g: &Globals) -> Result<Vault> {
    let mut options = g.options.clone();
    let key = &g.key;
    if encrypt {
        if let Some(f) = &key.key_file
            && !f.exists()
        {
            backup_core::generate_key_file(f)?;
            eprintln!("made key file {}: keep a copy away from the vault", f.display());
        }
        let source = match key.given()? {
            Some(k) => k,
            None if std::io::stdin().is_terminal() => KeySource::passphrase(new_passphrase_prompt()?),
            None => {
                return Err(usage(
                    "init --encrypt",
                    format!(
                        "--encrypt needs a key: ${PASSPHRASE_ENV}, --passphrase-file FILE, --key-file FILE, or a \
                         terminal to ask on"
                    ),
                ));
            }
        };
        options.key = Some(source);
    } else if key.key_file.is_some() || key.passphrase_file.is_some() {
        return Err(usage("init", "a passphrase or key file was given without --encrypt".into()));
    }
    Ok(g.init_with(path, options)?)
}

fn new_passphrase_prompt() -> Result<String> {
    let p = prompt("new passphrase: ")?;
    if prompt("the same passphrase again: ")? != p {
        bail!("the two passphrases differ");
    }
    Ok(p)
}

/// Runs `vmbackup key ...`.
pub fn run(command: KeyCommand, g: &Globals) -> Result<ExitCode> {
    match command {
        KeyCommand::List { vault, json } => {
            let v = open(&vault, g)?;
            let slots = v.key_slots()?;
            if json {
                outln!("{}", json!({ "vault": vault, "encrypted": v.is_encrypted(), "slots": slots }));
            } else if !v.is_encrypted() {
                outln!("vault {} is not encrypted: it has no key slots", vault.display());
            } else {
                outln!("{:<10} {:<12} {:<22} kdf", "slot", "kind", "created");
                for s in slots {
                    let kdf = s.kdf.map_or(String::from("-"), |k| {
                        format!("argon2id m={} KiB t={} p={}", k.memory_kib, k.iterations, k.parallelism)
                    });
                    outln!(
                        "{:<10} {:<12} {:<22} {kdf}",
                        s.id,
                        s.kind.to_string(),
                        s.created.round(jiff::Unit::Second)?
                    );
                }
            }
        }
        KeyCommand::Add { vault, new_passphrase_file, new_key_file, json } => {
            let v = open(&vault, g)?;
            let new = if let Some(f) = new_key_file {
                if !f.exists() {
                    backup_core::generate_key_file(&f)?;
                    eprintln!("made key file {}: keep a copy away from the vault", f.display());
                }
                KeySource::key_file(f)
            } else if let Some(f) = new_passphrase_file {
                KeySource::passphrase(read_passphrase_file(&f)?)
            } else if let Ok(p) = std::env::var(NEW_PASSPHRASE_ENV)
                && !p.is_empty()
            {
                KeySource::passphrase(p)
            } else if std::io::stdin().is_terminal() {
                KeySource::passphrase(new_passphrase_prompt()?)
            } else {
                bail!(
                    "key add needs the new key: --new-passphrase-file FILE, --new-key-file FILE, \
                     ${NEW_PASSPHRASE_ENV}, or a terminal to ask on"
                );
            };
            let slot = v.add_key(&new)?;
            if json {
                outln!("{}", json!({ "vault": vault, "added": slot }));
            } else {
                outln!("added {} slot {} to vault {}", slot.kind, slot.id, vault.display());
            }
        }
        KeyCommand::Remove { vault, slot } => {
            let v = open(&vault, g)?;
            let removed = v.remove_key(&slot)?;
            outln!("removed {} slot {} from vault {}", removed.kind, removed.id, vault.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
