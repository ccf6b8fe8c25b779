//! `vmbackup delete`, `undelete`, `list --deleted` and `config`: points
//! removed by mistake stay recoverable for the vault's soft-delete days.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use backup_core::{SettingsChange, StoreLock, VaultSettings};
use serde_json::json;

use crate::globals::Globals;
use crate::output::outln;

/// `vmbackup delete`: removes a point (soft-deleted unless the vault's
/// soft delete is off).
pub fn delete(g: &Globals, vault: &Path, vm: &str, point: &str, as_json: bool) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let d = backup_core::delete_point(&vault, vm, point)?;
    let (id, vm) = (&d.point.id, &d.point.vm);
    if as_json {
        let until = d.recoverable_until.map(|t| t.to_string());
        outln!("{}", serde_json::to_string_pretty(&json!({ "vm": vm, "point": id, "recoverable_until": until }))?);
    } else {
        match d.recoverable_until {
            Some(until) => outln!(
                "deleted point {id} of vm {vm}; `vmbackup undelete` brings it back until {}",
                until.strftime("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => outln!(
                "deleted point {id} of vm {vm} for good (soft delete is off); run `vmbackup gc` to reclaim its space"
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmbackup undelete`: brings a soft-deleted point back.
pub fn undelete(g: &Globals, vault: &Path, vm: &str, point: &str, as_json: bool) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let p = backup_core::undelete_point(&vault, vm, point)?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&crate::point_json(&p))?);
    } else {
        outln!("undeleted point {} of vm {} ({})", p.id, p.vm, p.time.strftime("%Y-%m-%d %H:%M:%S UTC"));
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmbackup list --deleted`: the soft-deleted points and when each goes
/// for good.
pub fn list_deleted(g: &Globals, vault: &Path, vm: Option<&str>, as_json: bool) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let deleted = backup_core::deleted_points(&vault, vm)?;
    if as_json {
        let records: Vec<_> = deleted
            .iter()
            .map(|d| {
                let mut o = crate::point_json(&d.point);
                o["deleted"] = json!(d.deleted.to_string());
                o["purge_after"] = json!(d.purge_after.to_string());
                o
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&json!({ "deleted": records }))?);
    } else {
        outln!("{:<24} {:<16} {:<25} {:<25} {:<25}", "POINT", "VM", "TIME", "DELETED", "RECOVERABLE UNTIL");
        let when = |t: jiff::Timestamp| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
        for d in &deleted {
            outln!(
                "{:<24} {:<16} {:<25} {:<25} {:<25}",
                d.point.id,
                d.point.vm,
                when(d.point.time),
                when(d.deleted),
                when(d.purge_after)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vmbackup config`: changes the vault's settings when asked, then shows
/// them.
pub fn config(g: &Globals, vault: &Path, change: &SettingsChange, as_json: bool) -> Result<ExitCode> {
    let vault = g.open(vault)?;
    let settings =
        if *change == SettingsChange::default() { vault.settings()? } else { vault.change_settings(change)? };
    let lock = vault.store_lock()?;
    if as_json {
        let mut json = serde_json::to_value(settings)?;
        json["store_lock"] = lock.as_str().into();
        outln!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_settings(&vault.location(), &settings, lock);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_settings(vault: &str, s: &VaultSettings, lock: StoreLock) {
    outln!("vault {vault}");
    let soft = match s.soft_delete_days {
        0 => "off: prune and delete remove points at once".to_string(),
        n => format!("{n} days: removed points can be undeleted until then"),
    };
    outln!("  soft delete:            {soft}");
    outln!(
        "  soft delete always on:  {}",
        if s.soft_delete_always_on { "yes (it cannot be turned off, its days only grow)" } else { "no" }
    );
    let immutable = match s.immutable_days {
        0 => "off".to_string(),
        n => format!("{n} days: younger points cannot be deleted, nor their data removed or rewritten"),
    };
    outln!("  immutable:              {immutable}");
    let lock = match (lock, s.immutable_days) {
        (StoreLock::Unavailable, _) => {
            "unavailable: the store cannot lock objects (a folder; Azure Blob: set an immutability policy \
             on the container)"
                .to_string()
        }
        (StoreLock::Disabled, _) => "disabled: the S3 bucket has no Object Lock".to_string(),
        (StoreLock::Enabled, 0) => "enabled on the S3 bucket; unused while the vault is not immutable".to_string(),
        (StoreLock::Enabled, n) => {
            format!("enabled: each object written is locked for {n} days (S3 Object Lock, compliance mode)")
        }
        (other, _) => other.as_str().to_string(),
    };
    outln!("  store lock:             {lock}");
}
