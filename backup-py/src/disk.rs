//! `vmbackup._native.DiskReader`: random access to a disk of a point, the
//! native half of `Vault.open_disk`'s file object (`vmbackup._disk`).

use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::to_py;

/// Reads one disk of a point at any offset; every block is checked as it
/// is read. Holds the vault's shared lock until closed. Made by
/// `Vault.open_disk`, which wraps it in a standard binary file object.
#[pyclass(module = "vmbackup", frozen)]
pub(crate) struct DiskReader {
    inner: Mutex<Option<backup_core::DiskReader<Arc<backup_core::Vault>>>>,
    size: u64,
    name: String,
    point: String,
}

impl DiskReader {
    pub(crate) fn new(reader: backup_core::DiskReader<Arc<backup_core::Vault>>) -> Self {
        DiskReader {
            size: reader.size(),
            name: reader.name().to_string(),
            point: reader.point_id().to_string(),
            inner: Mutex::new(Some(reader)),
        }
    }
}

#[pymethods]
impl DiskReader {
    /// The disk's size in bytes.
    #[getter]
    fn size(&self) -> u64 {
        self.size
    }

    /// The disk's name in its point.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The id of the point it reads.
    #[getter]
    fn point(&self) -> &str {
        &self.point
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().map(|g| g.is_none()).unwrap_or(true)
    }

    /// Up to `size` bytes at `offset`: fewer only at the end of the disk
    /// (none at or past it). Damaged data raises `CorruptionError` naming
    /// the disk's byte range.
    fn read_at<'py>(&self, py: Python<'py>, offset: u64, size: usize) -> PyResult<Bound<'py, PyBytes>> {
        let n = (size as u64).min(self.size.saturating_sub(offset)) as usize;
        let result = py.detach(|| -> PyResult<Result<Vec<u8>, backup_core::Error>> {
            let mut guard = self.inner.lock().map_err(|_| PyValueError::new_err("the reader failed earlier"))?;
            let reader = guard.as_mut().ok_or_else(|| PyValueError::new_err("read of a closed disk"))?;
            let mut buf = vec![0u8; n];
            Ok(reader.read_at(offset, &mut buf).map(|got| {
                buf.truncate(got);
                buf
            }))
        })?;
        match result {
            Ok(buf) => Ok(PyBytes::new(py, &buf)),
            Err(e) => Err(to_py(py, e)),
        }
    }

    /// Releases the reader and its hold on the vault; later reads raise
    /// `ValueError`. Closing twice does nothing.
    fn close(&self) {
        if let Ok(mut g) = self.inner.lock() {
            g.take();
        }
    }
}
