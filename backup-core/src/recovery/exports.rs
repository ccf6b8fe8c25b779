//! A point's disks served read-only to QEMU: one [`NbdServer`] per disk on
//! a unix socket in a work folder, each on its own thread, for as long as
//! a closure runs. The sockets belong to the user QEMU runs as (mode 0600)
//! when there is one, so that no other local user reads the disks.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::CancelToken;
use crate::nbd::{ExportAddress, ExportOptions, NbdServer};
use crate::vault::{PointManifest, Vault};

/// The bound exports of some disks of a point.
pub(crate) struct Exports<'v> {
    servers: Vec<(String, PathBuf, NbdServer<'v>)>,
}

impl<'v> Exports<'v> {
    /// Binds `disks` of `point` at `dir/DISK.sock` (stale sockets there are
    /// removed first), owned by `owner` when given.
    pub fn bind(
        vault: &'v Vault,
        point: &PointManifest,
        disks: &[String],
        dir: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<Exports<'v>> {
        let mut servers = Vec::new();
        for disk in disks {
            let socket = dir.join(format!("{disk}.sock"));
            if socket.symlink_metadata().is_ok() {
                std::fs::remove_file(&socket).map_err(|e| Error::io("remove the stale socket", &socket, e))?;
            }
            // QEMU holds one connection per disk and may add a few while
            // it reconnects.
            let options = ExportOptions { max_clients: 8, ..ExportOptions::default() };
            let server = NbdServer::bind(vault, point, disk, &ExportAddress::Unix(socket.clone()), options)?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
                    .map_err(|e| Error::io("give QEMU the socket", &socket, e))?;
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("restrict the socket", &socket, e))?;
            servers.push((disk.clone(), socket, server));
        }
        Ok(Exports { servers })
    }

    /// The socket of a disk's export.
    pub fn socket(&self, disk: &str) -> Option<&Path> {
        self.servers.iter().find(|(d, _, _)| d == disk).map(|(_, s, _)| s.as_path())
    }

    /// How many times QEMU connected to a disk's export.
    pub fn clients(&self, disk: &str) -> usize {
        self.servers.iter().find(|(d, _, _)| d == disk).map_or(0, |(_, _, s)| s.clients_served())
    }

    /// The last read of any export that failed, naming disk and bytes.
    pub fn last_error(&self) -> Option<String> {
        self.servers.iter().find_map(|(_, _, s)| s.last_error())
    }

    /// Serves every export while `work` runs, then stops them and waits for
    /// their threads.
    pub fn serve_while<T>(&self, work: impl FnOnce() -> T) -> T {
        /// Stops the servers however `work` ends, even by a panic:
        /// the scope would wait for them forever.
        struct StopOnDrop(CancelToken);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.cancel();
            }
        }
        let stop = CancelToken::new();
        std::thread::scope(|scope| {
            let _stop = StopOnDrop(stop.clone());
            for (_, _, server) in &self.servers {
                let stop = stop.clone();
                scope.spawn(move || server.serve(&stop));
            }
            work()
        })
    }
}
