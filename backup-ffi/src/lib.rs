//! C ABI of vmbackup (see issue 3).
