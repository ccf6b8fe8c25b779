//! Python `BlockDevice` objects as core block devices. A VM whose disks
//! are image files and Python devices at once is backed up through the
//! core's `MixedProvider`; [`PyDevice`] takes the GIL for each read.

use std::io;
use std::ops::Range;

use backup_core::BlockDevice;
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};

use crate::errors::type_name;

/// A Python `vmbackup.BlockDevice` as a core block device.
pub(crate) struct PyDevice {
    obj: Py<PyAny>,
    /// Asked once, before the job starts.
    size: u64,
    /// Whether the class overrides `allocated`: when not, the engine is
    /// told "not known" without a trip through the GIL.
    has_allocated: bool,
}

impl PyDevice {
    pub(crate) fn new(obj: Py<PyAny>, size: u64, has_allocated: bool) -> Self {
        PyDevice { obj, size, has_allocated }
    }
}

/// An `io::Error` carrying a Python `ValueError`, for a device that broke
/// its contract.
fn contract(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, pyo3::exceptions::PyValueError::new_err(msg))
}

impl BlockDevice for PyDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // Called on the engine's worker threads, several at once: each
        // waits for the GIL here.
        Python::attach(|py| {
            let data =
                self.obj.call_method1(py, intern!(py, "read_at"), (offset, buf.len())).map_err(io::Error::other)?;
            copy_into(data.bind(py), offset, buf)
        })
    }

    fn allocated(&self, window: Range<u64>) -> io::Result<Option<Vec<Range<u64>>>> {
        if !self.has_allocated {
            return Ok(None);
        }
        Python::attach(|py| {
            let r = self
                .obj
                .call_method1(py, intern!(py, "allocated"), (window.start, window.end))
                .map_err(io::Error::other)?;
            if r.is_none(py) {
                return Ok(None);
            }
            let list: Vec<(u64, u64)> = r.extract(py).map_err(|_| {
                io::Error::other(PyTypeError::new_err(
                    "BlockDevice.allocated must return a list of (start, end) int pairs or None",
                ))
            })?;
            let mut ranges: Vec<Range<u64>> = Vec::with_capacity(list.len());
            let mut last_end = 0;
            for (start, end) in list {
                if start > end || start < last_end {
                    return Err(contract(format!(
                        "BlockDevice.allocated({}, {}) returned ranges that are not sorted and disjoint",
                        window.start, window.end
                    )));
                }
                last_end = end;
                // Clip to the window: the engine asks one window at a time.
                let r = start.max(window.start)..end.min(window.end);
                if r.start < r.end {
                    ranges.push(r);
                }
            }
            Ok(Some(ranges))
        })
    }
}

/// Copies what `read_at` returned into `buf`, which it must fill exactly.
fn copy_into(data: &Bound<'_, PyAny>, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let owned;
    let bytes: &[u8] = if let Ok(b) = data.cast::<PyBytes>() {
        b.as_bytes()
    } else if let Ok(b) = data.cast::<PyByteArray>() {
        owned = b.to_vec();
        &owned
    } else if data.is_instance_of::<PyMemoryView>() {
        let b = data.call_method0(intern!(data.py(), "tobytes")).map_err(io::Error::other)?;
        owned = b.extract::<Vec<u8>>().map_err(io::Error::other)?;
        &owned
    } else {
        return Err(io::Error::other(PyTypeError::new_err(format!(
            "BlockDevice.read_at must return bytes, bytearray or memoryview, not {}",
            type_name(data)
        ))));
    };
    if bytes.len() != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("BlockDevice.read_at({offset}, {}) returned {} bytes", buf.len(), bytes.len()),
        ));
    }
    buf.copy_from_slice(bytes);
    Ok(())
}
