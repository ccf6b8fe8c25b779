//! Core errors as Python exceptions, and the argument checks that raise
//! `TypeError`/`ValueError` the way Python users expect.
//!
//! The exception classes are plain Python (`vmbackup/_errors.py`) so that
//! they can inherit from two builtins (`OSError`, `LookupError`); this
//! module looks them up by name and fills in their attributes.

use std::io;

use backup_core::{Error, ErrorKind};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

/// An exception class of `vmbackup._errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("vmbackup._errors")?.getattr(name)
}

/// Raises `name(*args)` with the given attributes set.
pub(crate) fn new_error<'py, A>(py: Python<'py>, name: &str, args: A, attrs: &[(&str, Bound<'py, PyAny>)]) -> PyErr
where
    A: pyo3::call::PyCallArgs<'py>,
{
    let make = || -> PyResult<PyErr> {
        let value = class(py, name)?.call1(args)?;
        for (k, v) in attrs {
            value.setattr(*k, v)?;
        }
        Ok(PyErr::from_value(value))
    };
    make().unwrap_or_else(|e| e)
}

/// The Python exception for a core error.
pub(crate) fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    let retryable = e.kind() == ErrorKind::Retryable;
    let obj = |v: &dyn ToPy| v.to_py(py);
    let err = match &e {
        Error::InvalidArgument { .. } => return PyValueError::new_err(msg),
        Error::Locked { path, .. } => {
            new_error(py, "VaultLockedError", (msg,), &[("path", obj(&path.display().to_string()))])
        }
        Error::NotFound { .. } | Error::NotAVault { .. } => new_error(py, "NotFoundError", (msg,), &[]),
        Error::Corrupt { object, .. } => new_error(py, "CorruptionError", (msg,), &[("object", obj(object))]),
        Error::DamagedRange { vm, point, disk, range, .. } => new_error(
            py,
            "CorruptionError",
            (msg,),
            &[
                ("vm", obj(vm)),
                ("point", obj(point)),
                ("disk", obj(disk)),
                ("start", obj(&range.start)),
                ("end", obj(&range.end)),
            ],
        ),
        Error::Io { path, source, .. } => io_error(py, msg, source, &[("filename", obj(&path.display().to_string()))]),
        Error::DeviceRead { vm, disk, offset, source, .. } => {
            io_error(py, msg, source, &[("vm", obj(vm)), ("disk", obj(disk)), ("offset", obj(offset))])
        }
        Error::RestoreWrite { vm, disk, target, offset, source } => io_error(
            py,
            msg,
            source,
            &[("vm", obj(vm)), ("disk", obj(disk)), ("offset", obj(offset)), ("filename", obj(target))],
        ),
        Error::AlreadyExists { path } => {
            new_error(py, "AlreadyExistsError", (libc::EEXIST, msg), &[("filename", obj(&path.display().to_string()))])
        }
        Error::Cancelled { .. } => new_error(py, "CancelledError", (msg,), &[]),
        Error::Tampered { object, .. } => new_error(py, "TamperedError", (msg,), &[("object", obj(object))]),
        Error::KeyRequired { path } => {
            new_error(py, "KeyRequiredError", (msg,), &[("path", obj(&path.display().to_string()))])
        }
        Error::WrongKey { path, .. } => {
            new_error(py, "WrongKeyError", (msg,), &[("path", obj(&path.display().to_string()))])
        }
        Error::Guest { place, .. } => new_error(py, "GuestError", (msg,), &[("place", obj(place))]),
        Error::Protected { .. } => new_error(py, "ProtectedError", (msg,), &[]),
        _ => new_error(py, "VmBackupError", (msg,), &[]),
    };
    if retryable {
        let _ = err.value(py).setattr("retryable", true);
    }
    err
}

/// A `VmBackupIOError` with the OS error number (an `AlreadyExistsError`,
/// also a `FileExistsError`, for `EEXIST`), and the Python exception a
/// `BlockDevice` raised as its cause.
fn io_error<'py>(py: Python<'py>, msg: String, source: &io::Error, attrs: &[(&str, Bound<'py, PyAny>)]) -> PyErr {
    let err = match source.raw_os_error() {
        Some(libc::EEXIST) => new_error(py, "AlreadyExistsError", (libc::EEXIST, msg), attrs),
        Some(errno) => new_error(py, "VmBackupIOError", (errno, msg), attrs),
        None => new_error(py, "VmBackupIOError", (msg,), attrs),
    };
    if let Some(cause) = source.get_ref().and_then(|e| e.downcast_ref::<PyErr>()) {
        err.set_cause(py, Some(cause.clone_ref(py)));
    }
    err
}

/// Values stored as exception attributes.
trait ToPy {
    fn to_py<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny>;
}

impl ToPy for String {
    fn to_py<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        pyo3::types::PyString::new(py, self).into_any()
    }
}

impl ToPy for u64 {
    fn to_py<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        match self.into_pyobject(py) {
            Ok(v) => v.into_any(),
            Err(never) => match never {},
        }
    }
}

/// The name of an object's type, for error messages.
pub(crate) fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// An `int` argument (not a `bool`): `TypeError` for anything else,
/// `ValueError` when it does not fit in an `i64`.
pub(crate) fn int_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    if !obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("{what} must be an int, not {}", type_name(obj))));
    }
    obj.extract::<i64>().map_err(|_| PyValueError::new_err(format!("{what} {obj} is out of range")))
}

/// `None` or a callable: `TypeError` for anything else.
pub(crate) fn callable_arg(obj: Option<Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Py<PyAny>>> {
    match obj {
        Some(o) if o.is_none() => Ok(None),
        Some(o) if o.is_callable() => Ok(Some(o.unbind())),
        Some(o) => Err(PyTypeError::new_err(format!("{what} must be a callable or None, not {}", type_name(&o)))),
        None => Ok(None),
    }
}
